"""Helpers shared by the integration and fault suites: real processes, texts, polling."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from pydoc_data.topics import topics

import redis
from prometheus_client.parser import text_string_to_metric_families

from common.protocol import batch_stats_key
from devtools import processes
from devtools.processes import PYTHON, ROOT, Flower, Webapp, Worker  # noqa: F401  (used by the tests)

_TEXT = " ".join(topics.values())
# 256 passages of real English, ~1000 characters each (the model reads the
# first 256 tokens): a job of these keeps the worker busy for seconds.
LONG = [_TEXT[i:i + 1000] for i in range(0, 256_000, 1000)]
# Sentences of real English, each different.
SENTENCES = [s for s in re.split(r"(?<=[.!?])\s+", _TEXT) if 40 < len(s) < 300]


def service_env(redis_url: str, model_dir: Path, **settings) -> dict:
    """A service's environment for tests: fast heartbeats so dead workers show quickly."""
    return processes.service_env(redis_url, model_dir, **{"heartbeat_s": 0.5, **settings})


def batch_stats(client: redis.Redis, model_id: str) -> dict:
    """The worker's batch counters for a model (see tasks.reporting)."""
    return {k.decode(): float(v) for k, v in client.hgetall(batch_stats_key(model_id)).items()}


def ran_since(before: dict, after: dict) -> dict:
    """What the counters of `batch_stats` added between two reads: this test's batches only."""
    return {key: value - before.get(key, 0) for key, value in after.items()}


def long_texts(count: int, words: int = 100) -> list[str]:
    """`count` different passages of real English, `words` words each.

    Load for the worker must be distinct texts: identical inputs in flight
    share one forward pass, so a list of copies is one item of work.
    """
    pool = _TEXT.split()
    return [" ".join(pool[i * words:(i + 1) * words]) for i in range(count)]


def wait_for_status(api, job_id: str, statuses: set, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    body = None
    while time.monotonic() < deadline:
        body = api.get(f"/jobs/{job_id}").json()
        if body.get("status") in statuses:
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {statuses}; last: {body}")


def scrape_metrics(api) -> dict[str, dict]:
    """{family name: {"type", "samples": {(sample name, labels): value}}} of one scrape."""
    response = api.get("/metrics")
    assert response.status_code == 200
    out = {}
    for family in text_string_to_metric_families(response.text):
        out[family.name] = {"type": family.type, "samples": {
            (s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}}
    return out


def metric_value(metrics: dict, name: str, **labels) -> float | None:
    """The value of one sample (`name` as exposed, with `_total`/`_bucket`...), None when absent."""
    wanted = tuple(sorted(labels.items()))
    for family in metrics.values():
        value = family["samples"].get((name, wanted))
        if value is not None:
            return value
    return None


def close(a, b, tol=1e-4):
    """Two vectors of the same length, equal within `tol` at every position."""
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) < tol


def celery_client(redis_url):
    """A stock Celery client on the test's Redis: sends what no webapp would."""
    from celery import Celery

    app = Celery("client", broker=redis_url, backend=redis_url)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    return app


def poll(fetch, condition, timeout: float = 15.0, step: float = 0.1):
    """`fetch()` again until `condition(value)` holds; that value. AssertionError with the last one after `timeout`.

    For a state the service reaches on its own schedule (a refresh, an
    expiry): the test waits for the state, not for the constant behind it.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if condition(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s; last: {value!r}")
        time.sleep(step)


def command_calls(client, command: str) -> int:
    """How many times this Redis ran `command` (INFO commandstats; subcommands as "script|exists")."""
    return client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


def wait_until(predicate, timeout: float, step: float = 0.05) -> float:
    """The monotonic time at which `predicate()` first held; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(step)
    raise AssertionError(f"not within {timeout}s")


# -- the fault suite (tests/faults/): load on a cluster of real processes ----------

# Jobs in a burst: enough that both workers of a pair hold some when one is killed.
JOBS = 200
# What a client may be answered while Redis restarts: never a 500.
ALLOWED = {"200", "202", "503"}


def bodies(count: int, start: int = 0, per_job: int = 2, model_id: str = "minilm") -> list[dict]:
    """`count` jobs of `per_job` different sentences each (nothing cached, nothing shared)."""
    n = len(SENTENCES)
    return [{"model_id": model_id, "options": {"use_cache": False},
             "inputs": [SENTENCES[(start + per_job * i + k) % n] for k in range(per_job)]} for i in range(count)]


def ready(*processes):
    """Wait until every process serves; return them."""
    for p in processes:
        p.wait_ready()
    return processes


def two_workers_and_a_webapp(c, model_id: str = "minilm"):
    """Workers w1 and w2 serving `model_id`, and a webapp, all ready."""
    return ready(c.worker("w1", preload_models=model_id), c.worker("w2", preload_models=model_id), c.webapp())


def burst(c, model_id: str = "minilm"):
    """Two workers and a webapp, JOBS jobs submitted, and a second of work done: (w1, w2, ledger)."""
    w1, w2, app = two_workers_and_a_webapp(c, model_id)
    ledger = c.ledger(app)
    ledger.submit_many(bodies(JOBS, model_id=model_id))
    time.sleep(1.0)
    return w1, w2, ledger


class Load:
    """A client submitting jobs at a steady pace (POST /jobs, and every third POST /predict)."""

    def __init__(self, ledger, per_second: float = 20.0, model_id: str = "minilm"):
        self.ledger = ledger
        self.model_id = model_id
        self.interval = 1.0 / per_second
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(4)]
        for t in self._threads:
            t.start()

    def _run(self, k: int) -> None:
        i = 0
        while not self._stop.is_set():
            body = bodies(1, start=k * 700 + i * 2, model_id=self.model_id)[0]
            if i % 3 == 2:
                body["options"]["wait"] = 5
                self.ledger.submit(body, path="/predict", timeout=30)
            else:
                self.ledger.submit(body, timeout=30)
            i += 1
            self._stop.wait(self.interval * 4)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


# -- the unit suite: the Flask app with a stub worker directory ---------------------

CLOSED = "redis://127.0.0.1:1/0"  # nothing listens on port 1


class StubWorkers:
    """Same interface as webapp.workers.WorkerDirectory, fixed answers."""

    def __init__(self, workers):
        self.workers = workers

    def live(self, fresh=False):
        return self.workers

    def serving(self, model_id):
        return [w for w in self.workers if model_id in w["models"]]


def make_client(model_dir, workers=None, **settings):
    """A test client of the app on `model_dir`, its Redis closed; `workers` stubs the live workers."""
    from common.settings import Settings
    from webapp import create_app

    config = {"SETTINGS": Settings(redis_url=CLOSED, model_dir=model_dir, max_body_bytes=2048, **settings)}
    if workers is not None:
        config["WORKER_DIRECTORY"] = StubWorkers(workers)
    return create_app(config).test_client()


def assert_error(response, status, type_):
    """The response has `status` and the API's error shape with `type_`."""
    assert response.status_code == status, response.data
    body = response.get_json()
    assert set(body) >= {"error"} and body["error"]["type"] == type_ and body["error"]["message"]


def make_model(root, name, arch="BertModel", weights=True, tokenizer=True, pooling=None):
    """A fake model directory the store accepts (config, weights and tokenizer files, no real weights)."""
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": "bert"}))
    if weights:
        (d / "model.safetensors").write_bytes(b"\0" * 16)
    if tokenizer:
        (d / "tokenizer.json").write_text("{}")
    if pooling:
        (d / "1_Pooling").mkdir()
        (d / "1_Pooling" / "config.json").write_text(json.dumps({f"pooling_mode_{pooling}": True}))
    return d
