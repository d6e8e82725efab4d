"""Private inputs: a job's text never reaches the worker's or the webapp's log, task events or Flower."""

from __future__ import annotations

import time
import uuid

import pytest
from celery import Celery

from celeryconfig import celery_conf
from common.protocol import INFER_TASK, arguments_summary, queue_for
from common.settings import Settings
from tests.helpers import Flower, service_env, wait_for_status


@pytest.fixture
def flower(redis_url, model_dir, log_dir):
    f = Flower(service_env(redis_url, model_dir), log_dir).wait_ready()
    yield f
    f.stop()


def flower_tasks(flower, job_ids, timeout=60.0) -> dict:
    """Flower's /api/tasks once every job in `job_ids` is there in a final state."""
    deadline = time.monotonic() + timeout
    tasks = {}
    while time.monotonic() < deadline:
        tasks = flower.get("/api/tasks")
        if all(tasks.get(j, {}).get("state") in ("SUCCESS", "FAILURE") for j in job_ids):
            return tasks
        time.sleep(0.3)
    raise AssertionError(f"Flower never showed {job_ids} finished: {[tasks.get(j) for j in job_ids]}")


def wait_until_flower_listens(flower, api, timeout=60.0) -> None:
    """Flower answers HTTP before it receives task events (they are not kept for late listeners):
    send probe jobs until it has seen one run from start to end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = api.post("/jobs", json={"model_id": "minilm", "inputs": "a probe", "options": {"use_cache": False}})
        assert probe.status_code == 202, probe.text
        job_id = probe.json()["job_id"]
        wait_for_status(api, job_id, {"succeeded"})
        time.sleep(1.0)
        seen = flower.get("/api/tasks").get(job_id, {})
        if seen.get("state") == "SUCCESS" and seen.get("received"):
            return
    raise AssertionError("Flower never received a whole job's events")


def test_a_jobs_text_reaches_no_log_and_not_flower(api, worker, webapp, flower, redis_url):
    """A unique sentence through /predict and /jobs (succeeding) and a Celery client (failing validation
    in the worker): absent from both logs and from Flower, where each job is listed with a summary."""
    wait_until_flower_listens(flower, api)
    secret = f"Quartermaster Ilse hid the ledger under plank {uuid.uuid4().hex}."
    predicted = api.post("/predict", json={"model_id": "minilm", "inputs": [secret]})
    assert predicted.status_code == 200, predicted.text
    queued = api.post("/jobs", json={"model_id": "minilm", "inputs": secret, "options": {"use_cache": False}})
    assert queued.status_code == 202, queued.text
    # A plain Celery client: its message's kwargsrepr holds the text, and the
    # worker refuses the parameter (the webapp would have, before queueing).
    client = Celery("client", set_as_current=False)
    client.conf.update(celery_conf(Settings(redis_url=redis_url)))
    refused = f"celery-client-{uuid.uuid4().hex}"
    client.send_task(INFER_TASK, kwargs={"model_id": "minilm", "inputs": [secret], "parameters": {"bogus": 1}},
                     task_id=refused, queue=queue_for("minilm"))
    job_ids = [predicted.json()["job_id"], queued.json()["job_id"], refused]
    assert wait_for_status(api, job_ids[1], {"succeeded"})["status"] == "succeeded"
    failed = wait_for_status(api, refused, {"failed"})
    assert failed["error"]["type"] == "validation_error"

    tasks = flower_tasks(flower, job_ids)
    everything = str(flower.get("/api/tasks")) + "".join(str(flower.get(f"/api/task/info/{j}")) for j in job_ids)
    assert secret not in everything
    summary = arguments_summary("minilm", [secret])
    assert [tasks[j]["kwargs"] for j in job_ids] == [summary, arguments_summary("minilm", secret), summary]
    assert tasks[refused]["exception"] == "ValidationFailed('validation_error')"
    for log in (worker.log(), webapp.log_path.read_text(), flower.log_path.read_text()):
        assert secret[:40] not in log  # not even a truncated quote of it
