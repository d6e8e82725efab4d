"""The fault suite's setup: a cluster per test, a report row per fault.

Each test gets its own Redis (with its append-only file, as `make run`
configures it), and starts the webapps and workers it needs — real
`celery -A tasks worker` and `gunicorn` processes with the default
settings unless the test says otherwise. Every process is stopped after
the test; if the test failed, the end of each process's log is printed.

`report` collects one row per fault for RELIABILITY.md: into the folder
FAULTS_REPORT_DIR when set (`make faults`), else into the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis

from devtools import processes
from devtools.processes import Webapp, Worker
from devtools.redis_server import EmbeddedRedis
from tests.faults.ledger import Ledger

RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


class Cluster:
    """A private Redis and the service processes a fault test starts."""

    def __init__(self, model_dir: Path, root: Path, broker_url: str | None = None, **settings):
        self.model_dir = model_dir
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.server = EmbeddedRedis(persist_dir=str(root / "redis")).start()
        self.url = self.server.url
        self.redis = redis.Redis.from_url(self.url)
        self.broker_url = broker_url
        self.settings = settings
        self.workers: list[Worker] = []
        self.webapps: list[Webapp] = []

    def env(self, **settings) -> dict:
        merged = {**self.settings, **settings}
        failpoints = merged.pop("failpoints", None)
        if self.broker_url:
            merged["broker_url"] = self.broker_url
        env = processes.service_env(self.url, self.model_dir, **merged)
        if failpoints:
            env["ATF_FAILPOINTS"] = failpoints
        return env

    def worker(self, name: str, **settings) -> Worker:
        worker = Worker(name, self.env(**settings), self.logs)
        self.workers.append(worker)
        return worker

    def respawn(self, worker: Worker) -> Worker:
        fresh = worker.respawn()
        self.workers.append(fresh)
        return fresh

    def webapp(self, **settings) -> Webapp:
        app = Webapp(self.env(**settings), self.logs, "--workers", "2", "--threads", "32")
        self.webapps.append(app)
        return app

    def ledger(self, app: Webapp) -> Ledger:
        return Ledger(self.url, app.url)

    def restart_redis(self, kill: bool = False, down_s: float = 2.0) -> None:
        """Stop the Redis server (SIGTERM, or SIGKILL), leave it down `down_s`, start it on the same port."""
        self.server.halt(kill=kill)
        time.sleep(down_s)
        self.server.start()

    def holder_of(self, worker: Worker) -> str | None:
        entry = worker.entry()
        return entry.get("holder") if entry else None

    def close(self, failed: bool) -> None:
        for app in self.webapps:
            if app.process.poll() is None:
                app.stop()
        for worker in self.workers:
            if worker.alive():
                worker.resume()
                worker.stop(timeout=30)
        if failed:
            for path in sorted(self.logs.iterdir()):
                print(f"----- {path.name} (end) -----")
                print(path.read_text(errors="replace")[-4000:])
        self.server.stop()


@pytest.fixture
def cluster(model_dir, tmp_path, request):
    made = []

    def make(broker_url: str | None = None, **settings) -> Cluster:
        c = Cluster(model_dir, tmp_path / f"cluster{len(made)}", broker_url, **settings)
        made.append(c)
        return c

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for c in made:
        c.close(failed)


@pytest.fixture
def report(tmp_path):
    """`report(fault=..., broker=..., outcome=Outcome, note=...)` records a row of RELIABILITY.md."""
    folder = Path(os.environ.get("FAULTS_REPORT_DIR") or tmp_path / "report")
    folder.mkdir(parents=True, exist_ok=True)

    def add(fault: str, broker: str, outcome, note: str = "", **extra) -> None:
        row = {"fault": fault, "broker": broker, "note": note, **outcome.as_dict(), **extra}
        (folder / f"{uuid.uuid4().hex}.json").write_text(json.dumps(row, indent=1))
        print(json.dumps(row))

    return add


def rabbitmq_or_skip() -> str:
    """The RabbitMQ URL; the test skips (saying why) where none answers, and fails under CI=true."""
    from kombu import Connection

    try:
        with Connection(RABBITMQ_URL, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # noqa: BLE001 - any failure means no broker here
        reason = f"no RabbitMQ at {RABBITMQ_URL} ({exc})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI runs RabbitMQ, so this is a failure")
        print(f"skipping: {reason}")
        pytest.skip(reason)
    return RABBITMQ_URL


def purge_rabbitmq_queue(url: str, queue: str) -> None:
    from kombu import Connection

    with Connection(url) as conn:
        channel = conn.channel()
        try:
            channel.queue_purge(queue)
        except Exception:  # noqa: BLE001 - a queue that does not exist yet is empty
            pass


def restart_rabbitmq(down_s: float = 2.0) -> None:
    """Stop the RabbitMQ application (every connection drops) and start it again; durable queues stay."""
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=120)
    time.sleep(down_s)
    subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)
