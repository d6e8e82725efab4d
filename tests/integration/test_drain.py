"""Graceful drain of the webapp: SIGTERM to gunicorn turns it not-ready, finishes what it holds, exits 0.

Real processes: a private Redis, a worker whose batches holding the marker
take seconds (a failpoint), and the webapp under gunicorn with a drain delay.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest
import redis
import requests

from common.protocol import JOB_KEY_PREFIX
from devtools.redis_server import EmbeddedRedis
from tests.helpers import Webapp, Worker, service_env

SLOW = "\u23f3drain"  # an input holding this makes its batch take SLOW_S
SLOW_S = 8
DRAIN_DELAY_S = 4  # longer than a probe needs to land; the slow job outlasts it


def wait_until(check, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never saw {what}")


def a_job_runs(client: redis.Redis) -> bool:
    return any(client.hget(key, "status") == b"running" for key in client.scan_iter(JOB_KEY_PREFIX + "*"))


def probe(url: str):
    """(status code, body) of /health/ready, or None when nothing answers."""
    try:
        response = requests.get(url + "/health/ready", timeout=5)
    except requests.ConnectionError:
        return None
    return response.status_code, response.json()


@pytest.fixture
def drain_stack(model_dir, log_dir):
    with EmbeddedRedis() as server:
        env = service_env(server.url, model_dir, preload_models="minilm", atf_failpoints=f"sleep_on={SLOW}:{SLOW_S}")
        worker = Worker("drain", env, log_dir).wait_ready()
        app = Webapp(service_env(server.url, model_dir, drain_delay_s=DRAIN_DELAY_S), log_dir,
                     "--workers", "1", "--threads", "8").wait_ready()
        yield app, redis.Redis.from_url(server.url)
        app.stop()
        worker.stop()


def test_sigterm_drains_then_exits(drain_stack):
    """The probe turns 503 draining while the port still answers; the slow /predict in hand gets 200; exit 0."""
    app, client = drain_stack
    assert probe(app.url)[0] == 200
    answer = {}
    body = {"model_id": "minilm", "inputs": f"{SLOW} a sentence that takes a while", "options": {"wait": 120}}
    slow = threading.Thread(target=lambda: answer.update(r=requests.post(app.url + "/predict", json=body,
                                                                         timeout=120)))
    slow.start()
    wait_until(lambda: a_job_runs(client), "the slow job running")

    app.process.send_signal(signal.SIGTERM)  # to gunicorn's master, as Kubernetes or docker stop do
    status, ready = wait_until(lambda: (lambda p: p if p and p[0] == 503 else None)(probe(app.url)),
                               "/health/ready turning 503")
    assert ready["status"] == "draining", ready
    assert requests.get(app.url + "/health/live", timeout=5).status_code == 200  # still accepting

    slow.join(120)
    assert answer["r"].status_code == 200, answer["r"].text
    assert answer["r"].json()["status"] == "succeeded"
    assert app.process.wait(60) == 0
    assert probe(app.url) is None  # gone: nothing listens any more
