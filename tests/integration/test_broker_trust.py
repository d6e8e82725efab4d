"""The broker is a trust boundary: a pickled message, on a model queue or the control broadcast, never runs.

Each pickle here, if it were ever unpickled, would create a marker file
(`open(path, "w")` as its reduce): the tests check the file never appears,
the worker stays up and serves the next job.
"""

from __future__ import annotations

import base64
import json
import pickle
import time
import uuid

import orjson
from celery import Celery

from celeryconfig import celery_conf
from common import envelope, protocol
from common.settings import Settings
from tests.helpers import wait_for_status


class Opens:
    """Unpickling this creates the file `path` (what any code run by a pickle could do)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def pickled_message(job_id: str, queue: str, payload) -> bytes:
    """A kombu envelope for `tasks.infer` whose body is a pickle (content type of Celery's pickle serializer)."""
    doc = orjson.loads(envelope.write(job_id, queue, {}, "", "test"))
    doc["body"] = base64.b64encode(pickle.dumps(payload)).decode()
    doc["content-type"] = "application/x-python-serialize"
    doc["content-encoding"] = "binary"
    return orjson.dumps(doc)


def client_app(redis_url: str, **conf) -> Celery:
    app = Celery("client", set_as_current=False)
    app.conf.update(celery_conf(Settings(redis_url=redis_url)))
    app.conf.update(conf)
    return app


def test_pickle_and_garbage_on_a_model_queue_fail_their_jobs_and_run_nothing(api, worker, rdb, tmp_path):
    """A pickled job is dead-lettered and fails unrun; a JSON job with garbage kwargs fails alone; next job runs."""
    queue = protocol.queue_for("minilm")
    marker = tmp_path / "pickle-ran"
    pickled = f"pickled-{uuid.uuid4().hex}"
    garbage = f"garbage-{uuid.uuid4().hex}"
    rdb.lpush(queue, pickled_message(pickled, queue, [[], {"model_id": "minilm", "inputs": [Opens(marker)]}, {}]))
    garbage_doc = orjson.loads(envelope.write(garbage, queue, {}, "", "test"))
    garbage_doc["body"] = base64.b64encode(orjson.dumps(
        [[], {"model_id": ["minilm"], "inputs": {"a": None}, "parameters": "x", "is_list": "maybe"}, {}])).decode()
    rdb.lpush(queue, orjson.dumps(garbage_doc))

    for job_id in (pickled, garbage):
        failed = wait_for_status(api, job_id, {"failed", "succeeded"})
        assert failed["status"] == "failed" and failed["error"]["type"] == "validation_error", failed
    assert "JSON only" in wait_for_status(api, pickled, {"failed"})["error"]["message"]
    letters = [json.loads(x) for x in rdb.lrange(protocol.DEAD_LETTERS_KEY, 0, 50)]
    assert {pickled, garbage} <= {x["job_id"] for x in letters}
    after = api.post("/predict", json={"model_id": "minilm", "inputs": "still serving",
                                       "options": {"use_cache": False}})
    assert after.status_code == 200, after.text
    assert not marker.exists() and worker.alive()


def test_a_pickled_control_broadcast_is_refused(api, worker, redis_url, tmp_path):
    """A remote-control broadcast serialized with pickle is not decoded; the worker answers the next ping."""
    marker = tmp_path / "broadcast-pickle-ran"
    evil = client_app(redis_url, task_serializer="pickle", accept_content=["pickle", "json"])
    evil.control.broadcast("ping", arguments={"payload": Opens(marker)}, reply=False)
    honest = client_app(redis_url)
    deadline = time.monotonic() + 30
    replies = []
    while not replies and time.monotonic() < deadline:  # a reply comes after the broadcast before it
        replies = honest.control.ping(destination=[worker.name], timeout=2)
    assert replies and worker.alive()
    assert not marker.exists()
    after = api.post("/predict", json={"model_id": "minilm", "inputs": "after the broadcast",
                                       "options": {"use_cache": False}})
    assert after.status_code == 200, after.text
