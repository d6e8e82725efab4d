"""POST /jobs, GET /jobs/<id>, DELETE /jobs/<id>: the asynchronous side of the API."""

import time

import pytest

from tests.helpers import LONG, wait_for_status


def submit(api, inputs, **extra):
    response = api.post("/jobs", json={"model_id": "minilm", "inputs": inputs, **extra})
    assert response.status_code == 202, response.text
    return response


def test_job_is_accepted_and_polled_to_its_result(api):
    response = submit(api, ["first", "second"])
    body = response.json()
    assert body["status"] == "queued"
    assert response.headers["Location"] == f"/jobs/{body['job_id']}" == body["status_url"]
    job = wait_for_status(api, body["job_id"], {"succeeded"})
    assert job["model_id"] == "minilm" and len(job["result"]) == 2 and len(job["result"][0]) == 384
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]


def test_queued_running_succeeded_and_cancel(api):
    """A long job runs while a later one waits queued; the queued one can be cancelled."""
    long_job = submit(api, LONG, options={"use_cache": False}).json()["job_id"]
    later = submit(api, "I wait behind the long job").json()["job_id"]
    seen = {wait_for_status(api, long_job, {"running", "succeeded"})["status"]}
    assert seen == {"running"}, "the long job should be observed running"
    assert api.get(f"/jobs/{later}").json()["status"] == "queued"

    cancel = api.delete(f"/jobs/{later}")
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    assert api.delete(f"/jobs/{later}").status_code == 200  # cancelling twice is harmless

    running = api.delete(f"/jobs/{long_job}")
    assert running.status_code == 409 and running.json()["error"]["type"] == "job_not_cancellable"

    done = wait_for_status(api, long_job, {"succeeded"})
    assert len(done["result"]) == len(LONG) == 256
    time.sleep(0.5)  # the worker meets the cancelled job after the long one
    cancelled = api.get(f"/jobs/{later}").json()
    assert cancelled["status"] == "cancelled" and "result" not in cancelled
    assert api.delete(f"/jobs/{long_job}").status_code == 409  # finished jobs cannot be cancelled


def test_predict_answers_202_when_wait_runs_out(api):
    submit(api, LONG, options={"use_cache": False})
    response = api.post("/predict", json={"model_id": "minilm", "inputs": "patience",
                                          "options": {"wait": 0.05}})
    assert response.status_code == 202
    body = response.json()
    assert response.headers["Location"] == body["status_url"] == f"/jobs/{body['job_id']}"
    assert wait_for_status(api, body["job_id"], {"succeeded"})["result"]


def test_unknown_job_is_404(api):
    for call in (api.get, api.delete):
        response = call("/jobs/00000000-0000-0000-0000-000000000000")
        assert response.status_code == 404 and response.json()["error"]["type"] == "job_not_found"


@pytest.mark.parametrize("wait", [0, 0.0])
def test_wait_zero_never_blocks(api, wait):
    # Not cached: an earlier run's result would be a legitimate 200 at once.
    response = api.post("/predict", json={"model_id": "minilm", "inputs": f"now ({wait!r})",
                                          "options": {"wait": wait, "use_cache": False}})
    assert response.status_code == 202
