"""Batching across jobs: many concurrent jobs, fewer forward passes."""

import concurrent.futures as futures

from tests.helpers import SENTENCES, batch_stats, wait_for_status


def test_32_concurrent_predicts_share_forward_passes(api, rdb):
    """32 clients at once: every answer is right, and the worker ran fewer than 32 passes."""
    before = batch_stats(rdb, "minilm")
    texts = SENTENCES[1000:1032]

    def one(text):
        return api.post("/predict", json={"model_id": "minilm", "inputs": text})

    with futures.ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(one, texts))
    assert all(r.status_code == 200 for r in responses)
    after = batch_stats(rdb, "minilm")
    items = after["items"] - before.get("items", 0)
    passes = after["batches"] - before.get("batches", 0)
    assert items == 32
    assert passes < 32
    assert max(r.json()["timings"]["batch_size"] for r in responses) > 1


def test_queued_jobs_are_packed_into_batches(api, rdb):
    """Jobs that pile up while the model is busy run together, each result intact."""
    before = batch_stats(rdb, "minilm")
    ids = [api.post("/jobs", json={"model_id": "minilm", "inputs": [s, s.upper()]}).json()["job_id"]
           for s in SENTENCES[2000:2032]]
    jobs = [wait_for_status(api, job_id, {"succeeded"}) for job_id in ids]
    assert all(len(job["result"]) == 2 for job in jobs)
    after = batch_stats(rdb, "minilm")
    assert after["items"] - before.get("items", 0) == 64
    assert after["batches"] - before.get("batches", 0) < 32
    sizes = {int(k[5:]) for k in after if k.startswith("size:")}
    assert max(sizes) > 2 and max(sizes) <= 32  # MAX_BATCH_SIZE is the cap
