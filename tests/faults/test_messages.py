"""Hostile messages on a model's queue: none kills a worker, each is dead-lettered or fails alone."""

from __future__ import annotations

import json
import time
import uuid

import orjson

from common import envelope, protocol
from tests.helpers import bodies, ready

# Bodies of the adversarial pass: each made every worker die 0.01 s after it started consuming.
POISON_BODIES = [b'[[],[1,2],{}]', b'[[],"abc",{}]', b'[5,{},{}]', b'[null,null,null]', b'[[],7,{}]']


def message_with_body(job_id: str, queue: str, body: bytes) -> bytes:
    """A kombu envelope for task `tasks.infer` carrying an arbitrary body."""
    doc = orjson.loads(envelope.write(job_id, queue, {}, "", "test"))
    import base64

    doc["body"] = base64.b64encode(body).decode()
    return orjson.dumps(doc)


def test_malformed_messages_never_kill_a_worker(cluster, report):
    """Five malformed bodies, a list element that is no message, a job for another model: the worker stays up."""
    c = cluster()
    worker, app = ready(c.worker("w1", preload_models="minilm"), c.webapp())
    ledger = c.ledger(app)
    queue = protocol.queue_for("minilm")
    poison_ids = [f"poison-{i}-{uuid.uuid4().hex[:6]}" for i in range(len(POISON_BODIES))]
    wrong_model = f"wrong-model-{uuid.uuid4().hex[:6]}"
    t0 = time.monotonic()
    ledger.submit_many(bodies(10))
    for job_id, body in zip(poison_ids, POISON_BODIES):
        c.redis.lpush(queue, message_with_body(job_id, queue, body))
    c.redis.lpush(queue, b"this is not a kombu message")
    c.redis.lpush(queue, envelope.write(wrong_model, queue, {"model_id": "tiny-ner", "inputs": ["x"]}, "", "test"))
    ledger.submit_many(bodies(10, start=40))
    for job_id in poison_ids + [wrong_model]:
        ledger.accepted[job_id] = time.monotonic()  # accounted for like the others: each must end
    outcome = ledger.wait(timeout=60, since=t0)
    letters = [json.loads(x) for x in c.redis.lrange(protocol.DEAD_LETTERS_KEY, 0, -1)]
    report(fault="malformed messages on a model's queue (5 bodies, 1 non-message, 1 job for another model)",
           broker="redis", outcome=outcome,
           note=f"{len(letters)} dead-lettered in {protocol.DEAD_LETTERS_KEY}; the worker never restarted")
    assert worker.alive() and "Unrecoverable error" not in worker.log()
    assert outcome.succeeded == 20 and outcome.failed == {"ValidationFailed": 6} and outcome.lost == 0
    assert {x["job_id"] for x in letters} == set(poison_ids) | {None}
