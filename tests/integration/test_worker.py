"""The worker process: bad messages, crashes, shutdown, start-up checks, health."""

import subprocess
import time

import pytest

from common.deliveries import deliveries_key
from common.settings import Settings
from tests.helpers import (
    LONG,
    PYTHON,
    ROOT,
    StubWorkers,
    Worker,
    celery_client,
    metric_value,
    scrape_metrics,
    service_env,
    wait_for_status,
)
from webapp import create_app


def test_a_malformed_job_fails_alone(api, redis_url):
    """A message the webapp would never send is stored as failed; the worker keeps serving."""
    client = celery_client(redis_url)
    bad = client.send_task("tasks.infer", kwargs={"model_id": "minilm", "inputs": [], "surprise": 1},
                           queue="infer.minilm")
    with pytest.raises(Exception) as info:
        bad.get(timeout=30)
    assert "invalid inference job" in str(info.value)
    good = client.send_task("tasks.infer", args=["minilm", ["plain celery clients work too"]], queue="infer.minilm")
    assert len(good.get(timeout=30)[0]) == 384


def test_bad_setting_stops_the_worker_naming_the_variable(redis_url, model_dir):
    env = service_env(redis_url, model_dir, max_batch_tokens="lots")
    out = subprocess.run([PYTHON, "-m", "celery", "-A", "tasks", "worker", "-n", "bad@test"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "MAX_BATCH_TOKENS" in out.stderr + out.stdout


def test_health_follows_the_workers(redis_url, model_dir, log_dir):
    """/health is 503 with a reason when no worker is alive, or none serves a model yet; 200 when one does."""
    url = redis_url.rsplit("/", 1)[0] + "/3"  # a database of its own: no other worker there
    settings = Settings(redis_url=url, model_dir=model_dir, heartbeat_s=0.5)
    client = create_app({"SETTINGS": settings}).test_client()
    body = client.get("/health")
    assert body.status_code == 503 and "no worker" in body.get_json()["message"]

    idle = Worker("idle", service_env(url, model_dir, preload_models=""), log_dir).wait_ready()
    try:
        for path in ("/health", "/health/ready"):
            body = client.get(path)
            assert body.status_code == 503 and body.get_json()["workers"] == [idle.name], body.get_json()
            assert "no worker serves a model yet: none asked for" in body.get_json()["message"]
    finally:
        assert idle.stop() == 0  # a warm shutdown leaves the registry

    w = Worker("health", service_env(url, model_dir, preload_models="minilm-b"), log_dir).wait_ready()
    try:
        ok = client.get("/health").get_json()
        assert ok["status"] == "ok" and ok["workers"] == [w.name] and ok["models"] == {"minilm-b": [w.name]}
    finally:
        w.kill()  # a crash leaves its entry behind; it goes stale within three heartbeats
    time.sleep(3 * 0.5 + 1.5)
    gone = client.get("/health")
    assert gone.status_code == 503 and gone.get_json()["workers"] == []


@pytest.mark.slow
def test_a_worker_killed_mid_batch_loses_no_job(api, redis_url, model_dir, log_dir):
    """Jobs held by a crashed worker go back to the queue once it misses its heartbeats; another runs them.

    The job it was running counts as redelivered in /metrics.
    """
    redelivered_before = metric_value(scrape_metrics(api), "atf_jobs_redelivered_total", model_id="minilm-b") or 0
    env = service_env(redis_url, model_dir, preload_models="minilm-b")
    victim = Worker("victim", env, log_dir).wait_ready()
    ids = [api.post("/jobs", json={"model_id": "minilm-b", "inputs": LONG[:64],
                                   "options": {"use_cache": False}}).json()["job_id"]
           for _ in range(3)]
    wait_for_status(api, ids[0], {"running"})
    victim.kill()
    assert all(api.get(f"/jobs/{i}").json()["status"] != "succeeded" for i in ids[1:])

    rescuer = Worker("rescuer", env, log_dir).wait_ready()
    try:
        for job_id in ids:
            job = wait_for_status(api, job_id, {"succeeded", "failed"}, timeout=90)
            assert job["status"] == "succeeded" and len(job["result"]) == 64
        redelivered = metric_value(scrape_metrics(api), "atf_jobs_redelivered_total", model_id="minilm-b")
        assert 1 <= redelivered - redelivered_before <= len(ids)  # at least the one it was running
    finally:
        rescuer.stop()


def test_warm_shutdown_leaves_the_registry(redis_url, model_dir, log_dir):
    w = Worker("brief", service_env(redis_url, model_dir, preload_models="minilm-b"), log_dir).wait_ready()
    assert w.entry()["models"].keys() == {"minilm-b"}
    assert w.stop() == 0
    assert w.entry() is None


def test_full_queue_is_429_with_retry_after(redis_url, model_dir, rdb):
    """Past MAX_QUEUE_DEPTH waiting jobs, POSTs are refused until the queue drains."""
    url = redis_url.rsplit("/", 1)[0] + "/4"  # a database where nobody consumes
    settings = Settings(redis_url=url, model_dir=model_dir, max_queue_depth=2)
    client = create_app({"SETTINGS": settings,
                         "WORKER_DIRECTORY": StubWorkers([{"name": "w", "models": {"minilm-b": {}}}])}).test_client()
    body = {"model_id": "minilm-b", "inputs": "x"}
    assert client.post("/jobs", json=body).status_code == 202
    assert client.post("/jobs", json=body).status_code == 202
    time.sleep(0.6)  # the depth reading is trusted for half a second
    refused = client.post("/jobs", json=body)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert refused.get_json()["error"]["type"] == "queue_full"


def test_prefetch_bounds_held_jobs_and_acks_free_the_slots(api, redis_url, model_dir, log_dir, rdb):
    """With WORKER_PREFETCH=2 a worker holds at most 2 jobs; every ack frees a slot, none leaks."""
    env = service_env(redis_url, model_dir, preload_models="minilm-b", max_batch_size=2, worker_prefetch=2)
    w = Worker("narrow", env, log_dir).wait_ready()
    held_key = deliveries_key(w.entry()["holder"])
    try:
        ids = [api.post("/jobs", json={"model_id": "minilm-b", "inputs": [f"sentence number {i}"]}).json()["job_id"]
               for i in range(20)]
        held = []
        for job_id in ids:
            held.append(rdb.hlen(held_key))
            assert wait_for_status(api, job_id, {"succeeded"}, timeout=60)["status"] == "succeeded"
        assert max(held) <= 2 and max(held) > 0
        deadline = time.monotonic() + 5
        while rdb.hlen(held_key) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rdb.hlen(held_key) == 0
    finally:
        w.stop()
