"""The service's processes, started as a user would: for tests, benchmarks and `make run`.

The command lines (`celery -A tasks worker`, `gunicorn 'webapp:create_app()'`,
`celery -A tasks flower`) and how a process is ended are written here once;
`Worker`, `Webapp` and `Flower` run them as subprocesses with their output
in a log file, for tests and benchmarks, and devtools/stack.py runs them
with their output on the terminal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import fields
from pathlib import Path

import redis

from common.protocol import WORKERS_KEY
from common.settings import Settings
from devtools.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SETTING_NAMES = {f.name.upper() for f in fields(Settings)}


def worker_argv(name: str, loglevel: str) -> list[str]:
    """A worker: `celery -A tasks worker` named `name` (Celery expands %h to the host name)."""
    return [PYTHON, "-m", "celery", "-A", "tasks", "worker", "-n", name, "-l", loglevel]


def webapp_argv(bind: str, *extra_args: str, app: str = "webapp:create_app()") -> list[str]:
    """The webapp: gunicorn serving `app` on `bind` (gunicorn.conf.py applies)."""
    return [PYTHON, "-m", "gunicorn", app, "--bind", bind, *extra_args]


def flower_argv(port: int, *extra_args: str) -> list[str]:
    """Flower: `celery -A tasks flower` on `port` (its login comes from FLOWER_BASIC_AUTH or the arguments)."""
    return [PYTHON, "-m", "celery", "-A", "tasks", "flower", f"--port={port}", *extra_args]


def wait_or_kill(process: subprocess.Popen, timeout: float) -> int:
    """Wait up to `timeout` s for a process told to stop; SIGKILL it past that. Its exit status."""
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return process.returncode


def end(process: subprocess.Popen, timeout: float) -> int:
    """SIGTERM (a warm shutdown), then `wait_or_kill`. Its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        wait_or_kill(process, timeout)
    return process.returncode


class ServiceFailed(AssertionError):
    """Raised when a service process exits or does not get ready in time."""


def service_env(redis_url: str, model_dir: Path, **settings) -> dict:
    """The environment of a service process: the caller's minus any of our settings."""
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    env.update(
        REDIS_URL=redis_url, MODEL_DIR=str(model_dir), HF_HUB_OFFLINE="1",
        PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
    )
    env.update({k.upper(): str(v) for k, v in settings.items()})
    return env


class Worker:
    """A real `celery -A tasks worker` process."""

    def __init__(self, name: str, env: dict, log_dir: Path, loglevel: str = "info", mode: str = "w"):
        self.short_name = name
        self.name = f"{name}@test"
        self.env = env
        self.log_dir = Path(log_dir)
        self.loglevel = loglevel
        self.redis_url = env["REDIS_URL"]
        self.preload = [m.strip() for m in env.get("PRELOAD_MODELS", "").split(",") if m.strip()]
        self.log_path = self.log_dir / f"worker-{name}.log"
        self._log = open(self.log_path, mode)
        self.process = subprocess.Popen(
            worker_argv(self.name, loglevel),
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def respawn(self) -> "Worker":
        """The same worker (name, settings, log) started again, as a supervisor would."""
        return Worker(self.short_name, self.env, self.log_dir, self.loglevel, mode="a")

    def alive(self) -> bool:
        return self.process.poll() is None

    def pause(self) -> None:
        """SIGSTOP: the process stops running (a long GC pause, swapping), its sockets stay open."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 120.0) -> "Worker":
        """Return once the worker runs and serves its PRELOAD_MODELS."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceFailed(f"worker {self.name} exited {self.process.returncode}:\n{self.log()[-3000:]}")
            entry = self.entry()
            if entry and entry.get("pid") == self.process.pid and "ready." in self.log():
                failed = {m: c for m, c in entry.get("changing", {}).items() if c.get("state") == "error"}
                if failed:
                    raise ServiceFailed(f"worker {self.name} could not load {failed}")
                if all(m in entry.get("models", {}) for m in self.preload):
                    return self
            time.sleep(0.2)
        raise ServiceFailed(f"worker {self.name} not ready in {timeout}s:\n{self.log()[-3000:]}")

    def entry(self) -> dict | None:
        raw = redis.Redis.from_url(self.redis_url).hget(WORKERS_KEY, self.name)
        return json.loads(raw) if raw else None

    def stop(self, timeout: float = 60.0) -> int:
        """Warm shutdown (SIGTERM), as an operator would."""
        end(self.process, timeout)
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        """A crash: SIGKILL, no chance to clean up."""
        self.process.kill()
        self.process.wait()
        self._log.close()


class Webapp:
    """A real `gunicorn 'webapp:create_app()'` on a free port (gunicorn.conf.py applies).

    `app` serves another WSGI app under the same settings (bench/floor.py).
    """

    def __init__(self, env: dict, log_dir: Path, *extra_args: str, app: str = "webapp:create_app()",
                 ready_path: str = "/openapi.json"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir) / f"webapp-{self.port}.log"
        self._log = open(self.log_path, "w")
        self.ready_path = ready_path
        self.process = subprocess.Popen(
            webapp_argv(f"127.0.0.1:{self.port}", *extra_args, app=app),
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60.0) -> "Webapp":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceFailed(f"webapp exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(self.url + self.ready_path, timeout=1).close()
                return self
            except OSError:
                time.sleep(0.2)
        raise ServiceFailed(f"webapp not up in {timeout}s")

    def stop(self) -> None:
        end(self.process, 30)
        self._log.close()

    def kill(self) -> None:
        """A crash of the whole webapp: SIGKILL to gunicorn's master and every worker process."""
        import psutil

        try:
            family = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        self.process.kill()
        for child in family:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        self.process.wait()
        self._log.close()


class Flower:
    """A real `celery -A tasks flower` on a free loopback port, behind basic auth."""

    def __init__(self, env: dict, log_dir: Path, user: str = "flower", password: str = "flower-test-pass"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.auth = (user, password)
        self.log_path = Path(log_dir) / f"flower-{self.port}.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            flower_argv(self.port, "--address=127.0.0.1", f"--basic-auth={user}:{password}"),
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def get(self, path: str, timeout: float = 5.0):
        """GET `path` with the credentials; the parsed JSON answer."""
        import base64

        request = urllib.request.Request(self.url + path, headers={
            "Authorization": "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def wait_ready(self, timeout: float = 60.0) -> "Flower":
        """Return once Flower answers its API (it sees task events from then on)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceFailed(f"flower exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                self.get("/api/tasks", timeout=2)
                return self
            except OSError:
                time.sleep(0.3)
        raise ServiceFailed(f"flower not up in {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        end(self.process, 30)
        self._log.close()
