"""Helpers shared by the integration and fault suites: real processes, texts, polling."""

from __future__ import annotations

import re
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
