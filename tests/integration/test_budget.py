"""Compute per request is bounded, and models share a worker's device: a real worker, two models.

The worker serves a generation model (tiny-bart) and an embedding model
under an id of its own (minilm-c), so no other worker of the session
takes their jobs.
"""

from datetime import datetime

import pytest

from common.settings import Settings
from tests.helpers import Worker, celery_client, long_texts, service_env, wait_for_status

GENERATION, EMBEDDING = "tiny-bart", "minilm-c"
# The request measured at 82 s before the budget: every factor within its own cap.
HUGE = {"max_new_tokens": 256, "num_beams": 8, "num_return_sequences": 8}


@pytest.fixture(scope="module")
def shared_worker(redis_url, model_dir, log_dir):
    """One worker serving tiny-bart and minilm-c, with the default budget."""
    w = Worker("shared", service_env(redis_url, model_dir, preload_models=f"{GENERATION},{EMBEDDING}"),
               log_dir).wait_ready(timeout=240)
    yield w
    w.stop()


def test_a_request_over_the_generation_budget_is_422_saying_why(api, shared_worker):
    """256 items x 256 tokens x 8 beams x 8 sequences: refused before queueing, naming the budget and the product."""
    budget = Settings().max_generation_tokens_per_request
    response = api.post("/predict", json={"model_id": GENERATION, "inputs": [f"input {i}" for i in range(256)],
                                          "parameters": HUGE})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "over_budget" and error["budget"] == budget and error["requested"] == 4194304
    assert "256 items x 256 max_new_tokens x 8 num_beams x 8 num_return_sequences = 4194304" in error["message"]
    assert f"at most {budget} per request (MAX_GENERATION_TOKENS_PER_REQUEST)" in error["message"]


@pytest.mark.parametrize("model_id, inputs, parameters, asks, setting", [
    ("tiny-gpt2", ["Once upon a time"] * 256, {"max_new_tokens": 200, "num_return_sequences": 4, "do_sample": True},
     "256 items x 200 max_new_tokens x 1 num_beams x 4 num_return_sequences = 204800 tokens",
     "MAX_GENERATION_TOKENS_PER_REQUEST"),
    ("tiny-zero-shot", [f"sentence {i}" for i in range(256)], {"candidate_labels": [f"label {i}" for i in range(64)]},
     "256 items x 64 candidate_labels = 16384 pairs", "MAX_ZERO_SHOT_PAIRS_PER_REQUEST"),
    ("tiny-fill-mask", ["[MASK] " * 200] * 2, {"top_k": 100},
     "400 [MASK] tokens (in 2 items) x 100 top_k = 40000 predictions", "MAX_FILL_MASK_PREDICTIONS_PER_REQUEST"),
])
def test_other_tasks_over_their_budget_are_422_too(api, model_id, inputs, parameters, asks, setting):
    """Zero-shot pairs, fill-mask predictions, sampled sequences: each product over its budget is refused."""
    response = api.post("/jobs", json={"model_id": model_id, "inputs": inputs, "parameters": parameters})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "over_budget" and asks in error["message"] and f"({setting})" in error["message"]


def test_token_vectors_over_their_budget_fail_in_the_worker_as_422(api):
    """pooling none: counted in tokens, so the worker (which tokenizes) refuses it; /predict answers 422."""
    budget = Settings().max_token_vectors_per_request
    inputs = long_texts(64)  # ~130 tokens each: about twice the default budget
    response = api.post("/predict", json={"model_id": "minilm", "inputs": inputs, "parameters": {"pooling": "none"},
                                          "options": {"use_cache": False}})
    assert response.status_code == 422, response.text[:500]
    error = response.json()["error"]
    assert error["type"] == "over_budget" and "(MAX_TOKEN_VECTORS_PER_REQUEST)" in error["message"]
    assert f"at most {budget} per request" in error["message"]


def test_a_message_over_the_budget_from_another_client_fails_in_the_worker(api, redis_url, shared_worker):
    """A Celery client that skips the webapp: the worker refuses the job unrun, and keeps serving."""
    client = celery_client(redis_url)
    over = client.send_task("tasks.infer", args=[GENERATION, [f"input {i}" for i in range(256)]],
                            kwargs={"parameters": HUGE}, queue=f"infer.{GENERATION}")
    with pytest.raises(Exception) as info:
        over.get(timeout=60)
    assert "MAX_GENERATION_TOKENS_PER_REQUEST" in str(info.value) and "4194304" in str(info.value)
    within = client.send_task("tasks.infer", args=[GENERATION, ["a fine input"]],
                              kwargs={"parameters": {"max_new_tokens": 4}}, queue=f"infer.{GENERATION}")
    assert len(within.get(timeout=60)[0]) == 1


def test_another_models_job_runs_between_the_batches_of_the_largest_generation_request(api, shared_worker):
    """The largest request the budget accepts, then a minilm one: minilm's finishes first, not after it all."""
    settings = Settings()
    items = settings.max_items_per_request
    parameters = {"max_new_tokens": settings.max_generation_tokens_per_request // items}
    big = api.post("/jobs", json={"model_id": GENERATION, "inputs": long_texts(items, 60), "parameters": parameters,
                                  "options": {"use_cache": False}})
    assert big.status_code == 202, big.text
    big_id = big.json()["job_id"]
    assert wait_for_status(api, big_id, {"running", "succeeded"})["status"] == "running"
    small = api.post("/predict", json={"model_id": EMBEDDING, "inputs": "A short sentence, sent a moment later.",
                                       "options": {"use_cache": False, "wait": 120}})
    assert small.status_code == 200, small.text
    generation = wait_for_status(api, big_id, {"succeeded", "failed"}, timeout=300)
    embedding = api.get(f"/jobs/{small.json()['job_id']}").json()
    assert generation["status"] == "succeeded", generation.get("error")
    at = datetime.fromisoformat
    assert at(embedding["finished_at"]) < at(generation["finished_at"])
