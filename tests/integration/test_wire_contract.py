"""The wire format (common/envelope.py) against the pinned Celery and kombu, on a real Redis.

Both directions, with the stock libraries on the other end: a message we
write is run by a stock `celery worker`; a result we store is read by
`AsyncResult`; what `send_task` writes is read by our reader; an ack we
make leaves kombu nothing to restore. When Celery or kombu changes its
format, these tests fail.

The stock worker's app is tests/integration/stock_celery.py. The module
has a Redis of its own: the stock worker and kombu's restore must see
only what these tests plant.
"""

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
import redis
from celery import Celery
from kombu import Connection

from common import envelope, protocol
from common.deliveries import Deliveries, deliveries_key, new_holder
from common.errors import InferenceFailed, JobCancelled
from common.requestid import REQUEST_ID_KEY
from common.settings import Settings
from devtools.processes import PYTHON
from tasks.job import Job, job_from_envelope
from tasks.reporting import Reporter
from tests.integration import stock_celery
from webapp.job_service import JobService, outcome

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def redis_url(private_redis_url):
    """A private server: only what these tests plant."""
    return private_redis_url


@pytest.fixture
def client(redis_url):
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def app(redis_url):
    """A stock Celery client on the private Redis."""
    client_app = Celery("client", broker=redis_url, backend=redis_url, set_as_current=False)
    client_app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    yield client_app
    client_app.close()


@pytest.fixture
def queue():
    return f"infer.wire-{uuid.uuid4().hex[:8]}"


def write(job_id, queue, kwargs, **extra):
    return envelope.write(job_id, queue, kwargs, "atf:replies:test", "test", **extra)


def poll(fn, timeout=30.0):
    """fn() once it is truthy, or its last value after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


# -- task messages ----------------------------------------------------------


@pytest.fixture
def stock_worker(redis_url, queue, tmp_path):
    """A stock `celery worker` (the CLI, solo pool) consuming `queue`."""
    log = tmp_path / "stock-worker.log"
    env = dict(os.environ, **{stock_celery.URL_ENV: redis_url}, PYTHONPATH=str(ROOT))
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [PYTHON, "-m", "celery", "-A", "tests.integration.stock_celery", "worker", "--pool=solo",
             "-Q", queue, "-n", f"stock-{queue}@test", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-l", "info"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    yield log
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_a_stock_celery_worker_runs_the_message_we_write(client, queue, stock_worker):
    """Our envelope, headers and body are a task message the pinned Celery worker accepts and runs."""
    job_id = str(uuid.uuid4())
    kwargs = {"model_id": "m", "inputs": ["hello", "wire"], "parameters": {"top_k": 2}, "is_list": True}
    client.lpush(queue, write(job_id, queue, kwargs, extra_headers={REQUEST_ID_KEY: "req-1"}))
    calls = poll(lambda: [c for c in map(json.loads, client.lrange(stock_celery.RAN_KEY, 0, -1))
                          if c["id"] == job_id], timeout=60)
    assert calls, f"the stock worker never ran the task; its log:\n{stock_worker.read_text()[-3000:]}"
    call = calls[0]
    assert call == {"id": job_id, "model_id": "m", "inputs": ["hello", "wire"], "parameters": {"top_k": 2},
                    "is_list": True, "reply_to": "atf:replies:test", "request_id": "req-1"}
    assert poll(lambda: client.llen(queue) == 0 and not client.hlen("unacked"), timeout=10)  # taken and acked


def test_stock_kombu_reads_what_we_write_and_what_is_handed_back(client, redis_url, queue):
    """Our envelope and our hand-back leave messages the pinned kombu consumes as it would its own."""
    ids = [str(uuid.uuid4()) for _ in range(2)]
    for job_id in ids:
        client.lpush(queue, write(job_id, queue, {"model_id": "m", "inputs": ["x"]}))
    deliveries = Deliveries(client)
    holder = new_holder("w@test")
    got = deliveries.fetch(holder, [(queue, 2)], first_tag=1)
    deliveries.hand_back(holder, [d.tag for d in got])
    with Connection(redis_url) as conn:
        simple = conn.SimpleQueue(queue)
        seen = []
        for _ in range(2):
            message = simple.get(timeout=5)
            seen.append(message.headers["id"])
            assert message.content_type == "application/json"
            assert message.decode()[1] == {"model_id": "m", "inputs": ["x"]}
            message.ack()
        simple.close()
    assert seen == ids


def test_we_read_what_celery_send_task_writes(client, app, queue):
    """A job sent by any Celery client, args and kwargs, priority list included, is read like ours."""
    sent = app.send_task(protocol.INFER_TASK, args=["m", ["hello"]], kwargs={"parameters": {"top_k": 2}},
                         queue=queue, priority=9, headers={REQUEST_ID_KEY: "req-2"})
    holder = new_holder("w@test")
    got = poll(lambda: Deliveries(client).fetch(holder, [(queue, 1)], first_tag=1), timeout=5)
    assert got and got[0].queue == queue  # from the priority list kombu keeps for it
    message = envelope.read(got[0].raw)
    assert message.job_id == sent.id and message.headers["task"] == protocol.INFER_TASK
    assert envelope.arguments(message) == (["m", ["hello"]], {"parameters": {"top_k": 2}})
    job = job_from_envelope(message)
    assert (job.model_id, job.inputs, job.params, job.request_id) == ("m", ["hello"], {"top_k": 2}, "req-2")


def test_kombus_priority_lists_are_the_ones_we_read(client, app, queue):
    """Each priority send_task can set lands in one of `lists_of(queue)`."""
    for priority in (0, 3, 6, 9):
        app.send_task(protocol.INFER_TASK, kwargs={"model_id": "m", "inputs": ["x"]}, queue=queue, priority=priority)
    lists = envelope.lists_of(queue)
    assert poll(lambda: [client.llen(key) for key in lists] == [1, 1, 1, 1], timeout=5)
    assert {envelope.queue_of(key) for key in lists} == {queue}


# -- results ------------------------------------------------------------------


@pytest.fixture
def reporter(redis_url, client):
    """Our reporter, storing into the private Redis; acks in the same script."""
    acks = []
    source = SimpleNamespace(acks_with_results=True, ack=acks.extend, wake=lambda: None)
    rep = Reporter(Settings(redis_url=redis_url), SimpleNamespace(event_dispatcher=None), source)
    rep.acked_after = acks
    yield rep
    rep.stop(5.0)


def finished_job(outputs, error=None, job_id=None, **extra) -> Job:
    job = Job(id=job_id or str(uuid.uuid4()), model_id="m", inputs=[None] * len(outputs), params={}, is_list=True,
              **extra)
    job.outputs, job.remaining, job.error = list(outputs), 0, error
    return job


def bug() -> Exception:
    try:
        raise RuntimeError("a bug in the worker")
    except RuntimeError as exc:
        return exc


def test_asyncresult_reads_the_results_the_reporter_stores(reporter, app):
    """Success (numpy outputs), a service error and a bug: state, result and the raised error as Celery's own."""
    ok = finished_job([np.array([0.5, -1.0], dtype=np.float32), np.array([2.0], dtype=np.float32)])
    failed = finished_job(["x"], InferenceFailed("the model failed on this input"))
    crashed = finished_job(["x"], bug())
    reporter._store("m", [ok, failed, crashed], 0, 0.0, 0, time.time())

    result = app.AsyncResult(ok.id)
    assert result.state == "SUCCESS" and result.successful()
    assert result.get(timeout=5) == [[0.5, -1.0], [2.0]]
    assert result.date_done is not None

    result = app.AsyncResult(failed.id)
    assert result.state == "FAILURE" and result.failed()
    assert isinstance(result.result, InferenceFailed) and result.result.message == "the model failed on this input"
    with pytest.raises(InferenceFailed):
        result.get(timeout=5)
    assert result.traceback is None  # a service error is no bug: no traceback

    result = app.AsyncResult(crashed.id)
    assert result.state == "FAILURE" and isinstance(result.result, RuntimeError)
    assert "RuntimeError: a bug in the worker" in result.traceback


def test_asyncresult_reads_what_the_webapp_stores_and_cancels(redis_url, client, app):
    """A job answered from the cache reads as SUCCESS; a cancelled one as REVOKED, raising JobCancelled."""
    jobs = JobService(Settings(redis_url=redis_url))
    done = jobs.store_completed("m", [[1.0, 2.0]])
    result = app.AsyncResult(done)
    assert result.state == "SUCCESS" and result.get(timeout=5) == [[1.0, 2.0]]

    queued = str(uuid.uuid4())
    client.hset(protocol.job_key(queued), mapping={"model_id": "m", "status": protocol.QUEUED})
    assert jobs.cancel(queued)["status"] == protocol.CANCELLED
    result = app.AsyncResult(queued)
    assert result.state == "REVOKED"
    with pytest.raises(JobCancelled):
        result.get(timeout=5)


def test_we_read_the_results_a_stock_worker_stores(app, client, queue, stock_worker):
    """Results Celery stores itself (any Celery worker's), success and failure, read by the webapp as done."""
    sent = app.send_task(protocol.INFER_TASK, kwargs={"model_id": "m", "inputs": ["abc", "de"]}, queue=queue)
    assert sent.get(timeout=60) == [3, 2]
    meta = orjson.loads(client.get(protocol.result_key(sent.id)))
    assert meta["status"] in envelope.READY_STATES and outcome(meta) == (protocol.SUCCEEDED, [3, 2], None)

    sent = app.send_task(protocol.INFER_TASK, kwargs={"model_id": "fail", "inputs": ["x"]}, queue=queue)
    with pytest.raises(ValueError):
        sent.get(timeout=60)
    meta = orjson.loads(client.get(protocol.result_key(sent.id)))
    assert meta["status"] in envelope.READY_STATES and outcome(meta)[0] == protocol.FAILED
    assert envelope.error_fields(meta) == ("ValueError", "boom")


# -- acks -------------------------------------------------------------------


def kombu_restores(redis_url) -> int:
    """Run the pinned kombu's restore of unacked messages (visibility timeout 0); messages it restored."""
    with Connection(redis_url, transport_options={"visibility_timeout": 0}) as conn:
        channel = conn.default_channel
        client = channel.client
        before = sum(client.llen(key) for key in client.keys("infer.*"))
        channel.qos.restore_visible(num=1000)
        return sum(client.llen(key) for key in client.keys("infer.*")) - before


def test_a_stock_kombu_message_left_unacked_is_restored(client, redis_url, queue):
    """The check below can fail: kombu restores a message it delivered and nobody acked."""
    client.lpush(queue, write(str(uuid.uuid4()), queue, {"model_id": "m", "inputs": ["x"]}))
    with Connection(redis_url) as conn:
        simple = conn.SimpleQueue(queue)
        simple.get(timeout=5)  # never acked
        assert client.hlen("unacked") == 1 and client.zcard("unacked_index") == 1
        assert kombu_restores(redis_url) == 1
        simple.close()
    client.delete(queue)


def test_stock_kombu_ack_leaves_nothing_to_restore(client, redis_url, queue):
    """kombu's own ack empties its `unacked` hash and index: the baseline ours is held to."""
    client.lpush(queue, write(str(uuid.uuid4()), queue, {"model_id": "m", "inputs": ["x"]}))
    with Connection(redis_url) as conn:
        simple = conn.SimpleQueue(queue)
        simple.get(timeout=5).ack()
        simple.close()
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    assert kombu_restores(redis_url) == 0 and client.llen(queue) == 0


@pytest.mark.parametrize("how", ["with the result", "alone"])
def test_our_ack_leaves_nothing_for_kombu_to_restore(client, redis_url, queue, reporter, how):
    """Fetched by our worker and acked (in the result script, or alone): gone from everywhere, restored by none."""
    job_id = str(uuid.uuid4())
    client.lpush(queue, write(job_id, queue, {"model_id": "m", "inputs": ["x"]}))
    holder = new_holder("w@test")
    deliveries = Deliveries(client)
    [delivery] = deliveries.fetch(holder, [(queue, 1)], first_tag=1)
    assert client.hlen(deliveries_key(holder)) == 1
    if how == "with the result":
        job = finished_job(["y"], job_id=job_id, tag=delivery.tag, holder=holder)
        reporter._store("m", [job], 0, 0.0, 0, time.time())
        assert reporter.acked_after == []  # acked inside the script, not after it
    else:
        deliveries.ack(holder, [delivery.tag])
    assert client.hlen(deliveries_key(holder)) == 0
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    assert kombu_restores(redis_url) == 0 and client.llen(queue) == 0
