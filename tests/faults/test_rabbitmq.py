"""The same faults with RabbitMQ as the broker (results and records stay in Redis).

RabbitMQ redelivers a worker's unacknowledged messages the moment its
connection drops; these tests check that nothing of ours gets in the way.
They skip, saying why, where no RabbitMQ answers — and fail under CI=true.
"""

from __future__ import annotations

import time

import pytest

from common.protocol import queue_for
from tests.faults.conftest import purge_rabbitmq_queue, rabbitmq_or_skip, restart_rabbitmq
from tests.helpers import ALLOWED, JOBS, Load, burst, ready, two_workers_and_a_webapp

MODEL = "minilm-b"  # a queue of its own on the shared broker


@pytest.fixture
def amqp():
    url = rabbitmq_or_skip()
    purge_rabbitmq_queue(url, queue_for(MODEL))
    yield url
    purge_rabbitmq_queue(url, queue_for(MODEL))


def test_kill_9_of_one_of_two_workers(cluster, amqp, report):
    """A worker SIGKILLed 1 s into 200 jobs: RabbitMQ redelivers what it held; all succeed once."""
    w1, w2, ledger = burst(cluster(broker_url=amqp), MODEL)
    t0 = time.monotonic()
    w1.kill()
    outcome = ledger.wait(timeout=90, since=t0)
    report(fault="worker kill -9 (1 of 2 workers, 200 jobs)", broker="rabbitmq", outcome=outcome,
           note="RabbitMQ requeues the dead connection's unacknowledged messages at once")
    assert outcome.lost == 0 and outcome.run_twice == 0 and outcome.failed == {}
    assert outcome.succeeded == JOBS and outcome.seconds_to_final <= 60


def test_sigterm_of_one_of_two_workers(cluster, amqp, report):
    """SIGTERM 1 s into 200 jobs: the batch in flight finishes, the rest is rejected back at once."""
    w1, w2, ledger = burst(cluster(broker_url=amqp), MODEL)
    t0 = time.monotonic()
    w1.stop()
    exited_s = time.monotonic() - t0
    outcome = ledger.wait(timeout=60, since=t0)
    report(fault="worker SIGTERM (1 of 2 workers, 200 jobs)", broker="rabbitmq", outcome=outcome,
           note=f"exited after {exited_s:.1f} s, code {w1.process.returncode}")
    assert w1.process.returncode == 0
    assert outcome.lost == 0 and outcome.run_twice == 0 and outcome.failed == {}
    assert outcome.succeeded == JOBS and outcome.seconds_to_final <= 30


def test_a_rabbitmq_restart_under_load_loses_no_accepted_job(cluster, amqp, report):
    """The broker application stopped 3 s mid-load and started again: 200/202/503 only; all accepted succeed."""
    c = cluster(broker_url=amqp)
    w1, w2, app = two_workers_and_a_webapp(c, MODEL)
    ledger = c.ledger(app)
    load = Load(ledger, model_id=MODEL)
    time.sleep(3.0)
    t0 = time.monotonic()
    restart_rabbitmq(down_s=3.0)
    time.sleep(8.0)
    load.stop()
    outcome = ledger.wait(timeout=120, since=t0)
    report(fault="RabbitMQ restart under load (rabbitmqctl stop_app, 3 s, start_app)", broker="rabbitmq",
           outcome=outcome, note=f"answers while it was down: {dict(ledger.errors) or 'none refused'}; "
                                 "both workers reconnected by themselves")
    assert set(outcome.answers) <= ALLOWED, outcome.answers
    assert not ledger.bad_answers and set(ledger.errors) <= {"503 broker_unavailable"}
    assert w1.alive() and w2.alive()
    assert outcome.lost == 0 and outcome.failed == {} and outcome.run_twice == 0
    after = [job_id for job_id, at in ledger.accepted.items() if at > t0 + 3.0]
    ran_after = {r.get("holder") for r in ledger.records(after)}
    assert {w1.name, w2.name} <= ran_after, ran_after  # both consume again


def test_a_pickled_job_on_rabbitmq_fails_unrun(cluster, amqp, tmp_path):
    """A pickle delivered by Celery's consumer is refused unread (our strategy, not kombu, sees it first)."""
    import pickle
    import uuid

    import requests
    from kombu import Connection

    from tests.helpers import wait_for_status

    class Opens:
        def __reduce__(self):
            return (open, (str(tmp_path / "pickle-ran"), "w"))

    c = cluster(broker_url=amqp)
    worker, app = ready(c.worker("w1", preload_models=MODEL), c.webapp())
    job_id = f"pickled-{uuid.uuid4().hex}"
    with Connection(amqp) as conn:
        conn.Producer().publish(
            pickle.dumps([[], {"model_id": MODEL, "inputs": [Opens()]}, {}]), routing_key=queue_for(MODEL),
            exchange="", content_type="application/x-python-serialize", content_encoding="binary",
            headers={"task": "tasks.infer", "id": job_id, "lang": "py"}, delivery_mode=2)

    class Api:
        def get(self, path):
            return requests.get(app.url + path, timeout=10)

    failed = wait_for_status(Api(), job_id, {"failed", "succeeded"})
    assert failed["status"] == "failed" and "JSON only" in failed["error"]["message"], failed
    after = requests.post(app.url + "/predict", json={"model_id": MODEL, "inputs": "still serving",
                                                      "options": {"use_cache": False}}, timeout=60)
    assert after.status_code == 200, after.text
    assert worker.alive() and not (tmp_path / "pickle-ran").exists()
