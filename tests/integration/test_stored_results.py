"""How results live in Redis: vectors in float32's shortest form; a result /predict delivered expires sooner."""

import re
import time
import uuid

import numpy as np
import orjson
import pytest

from common import protocol
from common.settings import DEFAULT_DELIVERED_RESULT_TTL, DEFAULT_RESULT_TTL
from tests.helpers import wait_for_status
from webapp.job_service import DELIVERED_FLUSH_S

_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def fresh(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


def wait_for_ttl(rdb, key: str, at_most: int, timeout: float = 5.0) -> int:
    """Poll until `key`'s TTL is at most `at_most`; the last TTL read."""
    deadline = time.monotonic() + timeout
    ttl = rdb.ttl(key)
    while ttl > at_most and time.monotonic() < deadline:
        time.sleep(0.05)
        ttl = rdb.ttl(key)
    return ttl


@pytest.mark.parametrize("pooling", ["mean", "cls", "none"])
def test_stored_vectors_are_float32_shortest_and_answered_unchanged(api, rdb, pooling):
    """The stored result holds float32's shortest decimals, and /predict answers those very float32 values."""
    body = api.post("/predict", json={"model_id": "minilm", "inputs": fresh("Vectors are stored compactly."),
                                      "parameters": {"pooling": pooling}}).json()
    stored = rdb.get(protocol.result_key(body["job_id"]))
    numbers = _NUMBER.findall(stored[stored.index(b'"result":'):stored.index(b',"traceback":')])
    answered = np.asarray(body["result"], dtype=np.float32)
    assert len(numbers) == answered.size > 0
    for text, value in zip(numbers, answered.ravel()):
        assert float(text) == float(np.format_float_scientific(value, unique=True))
    assert np.array_equal(np.asarray(orjson.loads(stored)["result"], dtype=np.float32), answered)


def test_a_result_predict_delivered_expires_sooner_than_one_polled(api, rdb):
    """After a 200 /predict its keys drop to DELIVERED_RESULT_TTL; a /jobs job and a 202 /predict keep RESULT_TTL."""
    queued = api.post("/jobs", json={"model_id": "minilm", "inputs": fresh("A job its client polls.")}).json()
    answered_late = api.post("/predict", json={"model_id": "minilm", "inputs": fresh("Answered with 202."),
                                               "options": {"wait": 0}})
    assert answered_late.status_code == 202
    polled = [queued["job_id"], answered_late.json()["job_id"]]
    for job_id in polled:
        wait_for_status(api, job_id, {"succeeded"})
    delivered = api.post("/predict", json={"model_id": "minilm", "inputs": fresh("Delivered at once.")})
    assert delivered.status_code == 200
    job_id = delivered.json()["job_id"]
    assert wait_for_ttl(rdb, protocol.result_key(job_id), DEFAULT_DELIVERED_RESULT_TTL) <= DEFAULT_DELIVERED_RESULT_TTL
    assert 0 < wait_for_ttl(rdb, protocol.job_key(job_id), DEFAULT_DELIVERED_RESULT_TTL) <= DEFAULT_DELIVERED_RESULT_TTL
    time.sleep(2 * DELIVERED_FLUSH_S)  # a negative to prove: a mistaken EXPIRE of the others would have run
    for job_id in polled:
        for key in (protocol.result_key(job_id), protocol.job_key(job_id)):
            assert DEFAULT_RESULT_TTL - 120 < rdb.ttl(key) <= DEFAULT_RESULT_TTL
