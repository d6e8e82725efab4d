"""Integration fixtures: a private Redis, the demo model, real worker and webapp processes.

Nothing is faked: the worker is `celery -A tasks worker` and the webapp is
`gunicorn 'webapp:create_app()'`, both as subprocesses, talking through a
Redis-compatible server started for this test session (or TEST_REDIS_URL,
whose database is flushed first). Tests stay independent through unique
job ids and by reading counters as differences.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
import redis
import requests

from common.protocol import WORKERS_KEY, batch_stats_key
from common.settings import Settings
from devtools.redis_server import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
SETTING_NAMES = {f.name.upper() for f in fields(Settings)}


@pytest.fixture(scope="session")
def redis_url():
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        redis.Redis.from_url(url).flushdb()
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """The demo model built by the real CLI, plus `minilm-b`, a second id for the same files."""
    root = tmp_path_factory.mktemp("models")
    env = dict(os.environ, MODEL_DIR=str(root), PYTHONPATH=str(ROOT))
    out = subprocess.run([PYTHON, "-m", "model_store", "build-demo", "minilm"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    (root / "minilm-b").symlink_to(root / "minilm", target_is_directory=True)
    return root


def service_env(redis_url: str, model_dir: Path, **settings) -> dict:
    """The environment of a service process: the caller's minus any of our settings."""
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    env.update(
        REDIS_URL=redis_url, MODEL_DIR=str(model_dir), HEARTBEAT_S="0.5", HF_HUB_OFFLINE="1",
        PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
    )
    env.update({k.upper(): str(v) for k, v in settings.items()})
    return env


class Worker:
    """A real `celery -A tasks worker` process."""

    def __init__(self, name: str, env: dict, log_dir: Path):
        self.name = f"{name}@test"
        self.redis_url = env["REDIS_URL"]
        self.log_path = log_dir / f"worker-{name}.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [PYTHON, "-m", "celery", "-A", "tasks", "worker", "-n", self.name, "-l", "info"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 120.0) -> "Worker":
        client = redis.Redis.from_url(self.redis_url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker {self.name} exited {self.process.returncode}:\n{self.log()[-3000:]}")
            raw = client.hget(WORKERS_KEY, self.name)
            if raw and "ready." in self.log():
                return self
            time.sleep(0.2)
        raise AssertionError(f"worker {self.name} not ready in {timeout}s:\n{self.log()[-3000:]}")

    def entry(self) -> dict | None:
        raw = redis.Redis.from_url(self.redis_url).hget(WORKERS_KEY, self.name)
        return json.loads(raw) if raw else None

    def stop(self, timeout: float = 60.0) -> int:
        """Warm shutdown (SIGTERM), as an operator would."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        """A crash: SIGKILL, no chance to clean up."""
        self.process.kill()
        self.process.wait()
        self._log.close()


class Webapp:
    """A real `gunicorn 'webapp:create_app()'` on a free port."""

    def __init__(self, env: dict, log_dir: Path, workers: int = 2, threads: int = 32):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"webapp-{self.port}.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [PYTHON, "-m", "gunicorn", "webapp:create_app()", "--bind", f"127.0.0.1:{self.port}",
             "--workers", str(workers), "--threads", str(threads)],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60.0) -> "Webapp":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"webapp exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                requests.get(self.url + "/openapi.json", timeout=1)
                return self
            except requests.ConnectionError:
                time.sleep(0.2)
        raise AssertionError(f"webapp not up in {timeout}s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self._log.close()


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def worker(redis_url, model_dir, log_dir):
    """The session's worker, serving `minilm`."""
    w = Worker("main", service_env(redis_url, model_dir, preload_models="minilm"), log_dir).wait_ready()
    yield w
    w.stop()


@pytest.fixture(scope="session")
def webapp(redis_url, model_dir, log_dir):
    app = Webapp(service_env(redis_url, model_dir), log_dir).wait_ready()
    yield app
    app.stop()


@pytest.fixture
def api(webapp, worker):
    """An HTTP session against the running webapp, with a worker serving minilm."""
    session = requests.Session()
    base = webapp.url

    class Api:
        url = base

        def get(self, path, **kw):
            return session.get(base + path, timeout=kw.pop("timeout", 60), **kw)

        def post(self, path, **kw):
            return session.post(base + path, timeout=kw.pop("timeout", 60), **kw)

        def delete(self, path, **kw):
            return session.delete(base + path, timeout=kw.pop("timeout", 60), **kw)

    yield Api()
    session.close()


@pytest.fixture
def rdb(redis_url):
    return redis.Redis.from_url(redis_url)


def batch_stats(client: redis.Redis, model_id: str) -> dict:
    """The worker's batch counters for a model (see tasks.reporting)."""
    return {k.decode(): float(v) for k, v in client.hgetall(batch_stats_key(model_id)).items()}


def wait_for_status(api, job_id: str, statuses: set, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = api.get(f"/jobs/{job_id}").json()
        if body.get("status") in statuses:
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {statuses}; last: {body}")
