"""Batching across jobs: many concurrent jobs, fewer forward passes.

The session's worker serves minilm for every test: each test reads the
worker's batch counters before and after, and counts only its own batches.
"""

import concurrent.futures as futures

from common.settings import DEFAULT_MAX_BATCH_SIZE
from tests.helpers import SENTENCES, batch_stats, ran_since, wait_for_status


def test_32_concurrent_predicts_share_forward_passes(api, rdb):
    """32 clients at once: every answer is right, and the worker ran fewer than 32 passes."""
    before = batch_stats(rdb, "minilm")
    texts = SENTENCES[1000:1032]

    def one(text):
        return api.post("/predict", json={"model_id": "minilm", "inputs": text})

    with futures.ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(one, texts))
    assert all(r.status_code == 200 for r in responses)
    ran = ran_since(before, batch_stats(rdb, "minilm"))
    assert ran["items"] == 32
    assert ran["batches"] < 32
    assert max(r.json()["timings"]["batch_size"] for r in responses) > 1


def test_queued_jobs_are_packed_into_batches(api, rdb):
    """Jobs that pile up while the model is busy run together, each result intact."""
    before = batch_stats(rdb, "minilm")
    ids = [api.post("/jobs", json={"model_id": "minilm", "inputs": [s, s.upper()]}).json()["job_id"]
           for s in SENTENCES[2000:2032]]
    jobs = [wait_for_status(api, job_id, {"succeeded"}) for job_id in ids]
    assert all(len(job["result"]) == 2 for job in jobs)
    ran = ran_since(before, batch_stats(rdb, "minilm"))
    assert ran["items"] == 64
    assert ran["batches"] < 32
    sizes = {int(k[5:]) for k, count in ran.items() if k.startswith("size:") and count > 0}
    assert max(sizes) > 2  # items of several jobs in one batch (each job has 2)
    assert max(sizes) <= DEFAULT_MAX_BATCH_SIZE  # the session's worker runs with the default cap
