"""Placement survives restarts and missed broadcasts; eviction never strands a model's jobs."""

from __future__ import annotations

import subprocess
import time

import requests

from common import protocol
from common.placement import Placement
from tests.helpers import LONG, bodies, ready, wait_until


def serves(worker, model_id: str) -> bool:
    entry = worker.entry()
    return bool(entry) and entry.get("pid") == worker.process.pid and model_id in entry.get("models", {})


def admin(app, action: str, **body) -> dict:
    response = requests.post(f"{app.url}/models/{action}", json={"wait": 60, **body}, timeout=90)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_worker_restarted_under_its_name_serves_again_what_it_served(cluster, report):
    """kill -9 of a worker that had a model loaded on demand; started again, it loads that model by itself."""
    c = cluster(heartbeat_s=0.5)
    worker, app = ready(c.worker("w1", preload_models="minilm"), c.webapp())
    assert admin(app, "load", model_id="tiny-ner")["workers"] == {worker.name: "loaded"}
    worker.kill()
    t0 = time.monotonic()
    again = c.respawn(worker).wait_ready()
    back_s = wait_until(lambda: serves(again, "tiny-ner"), 60) - t0
    ledger = c.ledger(app)
    ledger.submit({"model_id": "tiny-ner", "inputs": "Ada Lovelace lived in London."})
    outcome = ledger.wait(timeout=30, since=t0)
    report(fault="worker kill -9 and restart under its name (placement)", broker="redis", outcome=outcome,
           note=f"it served tiny-ner again {back_s:.1f} s after it was started (PRELOAD_MODELS=minilm only)")
    assert outcome.succeeded == 1


def test_a_worker_that_missed_an_unload_converges(cluster, report):
    """The placement says no: a worker that never saw the broadcast unloads the model within a few beats."""
    c = cluster(heartbeat_s=0.5)
    worker, app = ready(c.worker("w1", preload_models="minilm"), c.webapp())
    admin(app, "load", model_id="tiny-ner")
    t0 = time.monotonic()
    Placement(c.redis).drop(worker.name, "tiny-ner")  # what the webapp records; no broadcast sent
    gone_s = wait_until(lambda: not serves(worker, "tiny-ner"), 30) - t0
    assert serves(worker, "minilm")
    print(f"converged {gone_s:.1f} s after its placement changed")


def test_an_unload_while_a_worker_is_down_holds_when_it_comes_back(cluster):
    """Unloading with no worker up still counts: the worker, restarted, does not load the model again."""
    c = cluster(heartbeat_s=0.5)
    worker, app = ready(c.worker("w1", preload_models="minilm"), c.webapp())
    admin(app, "load", model_id="tiny-ner")
    worker.stop()
    assert admin(app, "unload", model_id="tiny-ner")["workers"] == {}
    again = c.respawn(worker).wait_ready()
    time.sleep(3.0)  # six heartbeats: two chances to converge
    assert serves(again, "minilm") and not serves(again, "tiny-ner")


def test_eviction_never_strands_jobs_waiting_for_a_model(cluster, report):
    """MAX_MODELS_PER_WORKER=2 and both models busy: loading a third fails with the reason; no job waits forever."""
    c = cluster(heartbeat_s=0.5, max_models_per_worker=2)
    worker, app = ready(c.worker("w1", preload_models="minilm,minilm-b"), c.webapp())
    ledger = c.ledger(app)
    t0 = time.monotonic()
    ledger.submit({"model_id": "minilm", "inputs": LONG[:128], "options": {"use_cache": False}})
    ledger.submit_many(bodies(40, model_id="minilm-b"))
    refused = admin(app, "load", model_id="tiny-ner")["workers"][worker.name]
    outcome = ledger.wait(timeout=120, since=t0)
    loaded = admin(app, "load", model_id="tiny-ner")["workers"][worker.name]  # nothing waits now: evicts one
    report(fault="loading a 3rd model while MAX_MODELS_PER_WORKER=2 models have jobs waiting", broker="redis",
           outcome=outcome, note=f"the load answered `{refused}`; once the jobs were done it was `{loaded}`")
    assert protocol.is_load_failure(refused) and "MAX_MODELS_PER_WORKER" in refused
    assert outcome.succeeded == 41 and outcome.lost == 0 and loaded == "loaded"


def test_a_worker_serving_many_models_holds_no_more_than_serving_one(cluster, tmp_path):
    """One worker serving 4 models (stand-ins, 200 ms a batch of one), 8 jobs sent at once, 2 per model: it
    holds at most two batches' worth of them in all, as it would serving one model; the rest wait in their
    queues for any worker. Each model's own room (two of its batches) let it take all 8 and run them one
    after another while a worker started meanwhile, or idle beside it, got none."""
    from common.deliveries import Deliveries, deliveries_key
    from devtools.processes import PYTHON, ROOT

    models = tmp_path / "models"
    subprocess.run([PYTHON, "-m", "model_store", "--model-dir", str(models), "build-stand-in", "slow",
                    "--forward-ms", "200"], cwd=ROOT, check=True, capture_output=True)
    ids = [f"m{i}" for i in range(1, 5)]
    for model_id in ids:
        (models / model_id).symlink_to(models / "slow", target_is_directory=True)
    c = cluster(max_batch_size=1, max_models_per_worker=len(ids))
    c.model_dir = models
    worker, app = ready(c.worker("w1", preload_models=",".join(ids)), c.webapp())
    holder = c.holder_of(worker)
    ledger = c.ledger(app)
    t0 = time.monotonic()
    ledger.submit_many([{"model_id": model_id, "inputs": f"text {k} for {model_id}", "options": {"use_cache": False}}
                        for k in range(2) for model_id in ids])
    held, deliveries = [], Deliveries(c.redis)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        held.append(c.redis.hlen(deliveries_key(holder)))
        time.sleep(0.01)
    outcome = ledger.wait(timeout=60, since=t0)
    assert outcome.succeeded == 8 and outcome.lost == 0 and outcome.restarted == 0, outcome.as_dict()
    # MAX_BATCH_SIZE=1: two batches' worth is 2 jobs (one running, one ready) whatever the number of models,
    # and a finished job's delivery stays until its result is stored: 3 at most.
    assert 1 <= max(held) <= 3, held
    assert deliveries.held(holder) == {}
