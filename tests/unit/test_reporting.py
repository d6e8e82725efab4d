"""The reporter's stored documents: float32 outputs in float32's shortest form, read back exactly."""

import re
import time
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from common import protocol
from common.settings import Settings
from tasks.job import Job
from tasks.reporting import Reporter

_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


class ScriptCapture:
    """Stands for Redis under Reporter._store: keeps the store script's arguments, writes nothing."""

    def __init__(self):
        self.args: list = []

    def script_load(self, script):
        return "sha"

    def evalsha(self, sha, numkeys, *args):
        self.args = list(args)

    def pipeline(self, transaction=True):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self):
        return [[1]]  # the one job's result was stored first

    def value_after(self, key: str) -> bytes:
        """The value the script would SET under `key`."""
        return self.args[self.args.index(key) + 1]


@pytest.fixture
def stored():
    """Run one finished job with float32 outputs through Reporter._store; the captured script arguments."""
    rng = np.random.default_rng(7)
    vector = (rng.standard_normal(384) * 0.1).astype(np.float32)
    vector[:4] = [1e-8, -3.5e7, 0.1, -0.0]  # exponents, a value float64 would print long, a signed zero
    tokens = rng.standard_normal((5, 8)).astype(np.float32)  # pooling "none": a matrix per item
    job = Job(id="job-f32", model_id="minilm", inputs=["a", "b"], params={}, is_list=True)
    job.outputs, job.remaining = [vector, tokens], 0
    job.cache_keys = ["atf:cache:vector", "atf:cache:tokens"]
    reporter = Reporter(Settings(), SimpleNamespace(event_dispatcher=None),
                        SimpleNamespace(acks_with_results=False, ack=lambda jobs: None))
    capture = ScriptCapture()
    reporter.redis = capture
    try:
        reporter._store("minilm", [job], 0, 0.0, 0, time.time())
    finally:
        reporter.stop(1.0)
    return capture, vector, tokens, job


def _same_float32(read, original) -> bool:
    """Bit for bit (so -0.0 and 0.0 differ)."""
    read = np.asarray(read, dtype=np.float32)
    return read.shape == original.shape and np.array_equal(read.view(np.uint32), original.view(np.uint32))


def _shortest_float32(value) -> float:
    """The value of float32's shortest round-tripping decimal, computed by numpy (Dragon4)."""
    return float(np.format_float_scientific(np.float32(value), unique=True))


def test_result_and_cache_entries_read_back_to_the_identical_float32(stored):
    """Celery's result document and each cache entry parse back to the very float32 values computed."""
    capture, vector, tokens, job = stored
    meta = orjson.loads(capture.value_after(protocol.result_key(job.id)))
    assert meta["status"] == "SUCCESS" and meta["task_id"] == job.id
    assert _same_float32(meta["result"][0], vector) and _same_float32(meta["result"][1], tokens)
    assert _same_float32(orjson.loads(capture.value_after("atf:cache:vector")), vector)
    assert _same_float32(orjson.loads(capture.value_after("atf:cache:tokens")), tokens)


def test_floats_are_written_in_float32_shortest_form(stored):
    """Every number is float32's shortest decimal, not float64's repr of it: ~40% fewer bytes."""
    capture, vector, tokens, _ = stored
    for key, output in (("atf:cache:vector", vector), ("atf:cache:tokens", tokens)):
        value = capture.value_after(key)
        numbers = _NUMBER.findall(value)
        assert len(numbers) == output.size
        assert all(float(text) == _shortest_float32(v) for text, v in zip(numbers, output.ravel()))
        assert len(value) < 0.65 * len(orjson.dumps(output.tolist()))  # what .tolist() stored before
