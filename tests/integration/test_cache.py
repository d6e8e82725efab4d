"""The response cache: two levels, per item, never stale, coalescing identical requests."""

import concurrent.futures as futures
import os
import uuid

import pytest
import requests

from tests.helpers import Webapp, Worker, batch_stats, close, long_texts, poll, service_env


@pytest.fixture(scope="module")
def web(redis_url, model_dir, log_dir, worker):
    """A webapp of one process, so level 1 is one cache; restartable to empty it."""

    class Web:
        def __init__(self):
            self.app = None
            self.start()

        def start(self):
            self.app = Webapp(service_env(redis_url, model_dir), log_dir, "--workers", "1").wait_ready()
            self.session = requests.Session()

        def restart(self):
            self.app.stop()
            self.start()

        def post(self, path, **body):
            return self.session.post(self.app.url + path, json=body, timeout=120)

        def predict(self, model_id, inputs, **options):
            response = self.post("/predict", model_id=model_id, inputs=inputs, options=options)
            assert response.status_code == 200, response.text
            return response.json()

    w = Web()
    yield w
    w.app.stop()


def fresh(text="a sentence nobody sent before"):
    return f"{text} {uuid.uuid4().hex[:8]}"


def test_hits_at_both_levels(web):
    text = fresh()
    first = web.predict("minilm", text)
    assert first["cached"] is False and first["job_id"]
    second = web.predict("minilm", text)
    assert second["cached"] is True and second["timings"]["cache"] == "l1" and second["job_id"] is None
    assert close(second["result"], first["result"], 1e-9)
    web.restart()  # level 1 is gone; Redis (level 2) is not
    third = web.predict("minilm", text)
    assert third["cached"] is True and third["timings"]["cache"] == "l2"
    assert web.predict("minilm", text)["timings"]["cache"] == "l1"


def test_a_list_sends_only_its_uncached_items(web, rdb):
    a, b, c = fresh("alpha"), fresh("beta"), fresh("gamma")
    solo = {t: web.predict("minilm", t)["result"] for t in (a, c)}
    before = batch_stats(rdb, "minilm")
    mixed = web.predict("minilm", [a, b, c])
    assert mixed["cached"] is False and mixed["timings"]["cached_items"] == 2
    assert batch_stats(rdb, "minilm")["items"] - before["items"] == 1  # only b ran
    assert close(mixed["result"][0], solo[a], 1e-9) and close(mixed["result"][2], solo[c], 1e-9)
    assert web.predict("minilm", [a, b, c])["cached"] is True


def test_use_cache_false_bypasses_both_levels_and_writes_nothing(web, rdb):
    text = fresh()
    web.predict("minilm", text)
    before = batch_stats(rdb, "minilm")
    bypass = web.predict("minilm", text, use_cache=False)
    assert bypass["cached"] is False and batch_stats(rdb, "minilm")["items"] - before["items"] == 1
    other = fresh()
    web.predict("minilm", other, use_cache=False)
    assert web.predict("minilm", other)["cached"] is False  # the bypassed answer was not stored


def test_a_switch_never_serves_the_old_weights(web, worker):
    text = fresh()
    v1 = web.predict("minilm", text)["result"]
    assert web.predict("minilm", text)["cached"] is True
    switched = web.post("/models/switch", model_id="minilm", source="minilm-v2").json()
    assert switched["workers"] == {worker.name: "switched"}
    try:
        # Cached v1 until the webapp re-reads the workers' fingerprints; then computed by v2.
        after = poll(lambda: web.predict("minilm", text), lambda answer: answer["cached"] is False)
        assert not close(after["result"], v1)
    finally:
        web.post("/models/switch", model_id="minilm", source="minilm")
    # Cached v2 until the webapp sees v1 back; then v1's entry, which is right for v1 again.
    back = poll(lambda: web.predict("minilm", text), lambda answer: close(answer["result"], v1, 1e-9))
    assert back["cached"] is True


def test_a_rebuilt_model_directory_is_a_new_fingerprint(web, model_dir, worker):
    """Reloading after the files changed: entries of the old files are not read."""
    import shutil

    target = model_dir / "minilm-rebuilt"
    shutil.copytree(model_dir / "minilm", target, symlinks=True)
    try:
        assert web.post("/models/load", model_id="minilm-rebuilt", workers=[worker.name]).status_code == 200
        text = fresh()
        web.predict("minilm-rebuilt", text)
        assert web.predict("minilm-rebuilt", text)["cached"] is True
        os.utime(target / "model.safetensors")  # "rebuilt": same bytes, new files
        web.post("/models/unload", model_id="minilm-rebuilt")
        web.post("/models/load", model_id="minilm-rebuilt", workers=[worker.name])
        # Once the webapp has the new fingerprint, the old entry is not read.
        poll(lambda: web.predict("minilm-rebuilt", text), lambda answer: answer["cached"] is False)
    finally:
        web.post("/models/unload", model_id="minilm-rebuilt")
        shutil.rmtree(target)


def test_20_identical_concurrent_requests_make_one_forward_pass(web, rdb, worker):
    assert web.post("/models/load", model_id="minilm-c", workers=[worker.name]).json()["workers"] == {
        worker.name: "loaded"}
    try:
        text = fresh("coalesce me")
        before = batch_stats(rdb, "minilm-c")
        # keep the worker busy so all twenty are in flight together
        web.post("/jobs", model_id="minilm", inputs=long_texts(32), options={"use_cache": False})
        with futures.ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda _: web.predict("minilm-c", text), range(20)))
        results = [a["result"] for a in answers]
        assert all(close(r, results[0], 1e-9) for r in results)
        assert batch_stats(rdb, "minilm-c")["items"] - before.get("items", 0) == 1
        # one job: every request joined it, or (arriving just after it finished) read its outputs from the cache
        assert len({a["job_id"] for a in answers if not a["cached"]}) == 1
    finally:
        web.post("/models/unload", model_id="minilm-c")


def test_errors_are_never_cached(web, rdb):
    keys_before = len(list(rdb.scan_iter("atf:cache:*", count=1000)))
    body = {"model_id": "minilm", "inputs": "word " * 400, "parameters": {"truncate": False}}
    for _ in range(2):
        response = web.session.post(web.app.url + "/predict", json=body, timeout=60)
        assert response.status_code == 422 and response.json()["error"]["type"] == "input_too_long"
    assert len(list(rdb.scan_iter("atf:cache:*", count=1000))) == keys_before


def test_entries_expire_after_cache_ttl(redis_url, model_dir, log_dir):
    """CACHE_TTL=1: an answer is served from the cache for a second, then computed again."""
    env = service_env(redis_url, model_dir, preload_models="tiny-ner", cache_ttl=1)
    w = Worker("ttl", env, log_dir).wait_ready()
    app = Webapp(env, log_dir, "--workers", "1").wait_ready()
    try:
        def predict(text):
            response = requests.post(app.url + "/predict", json={"model_id": "tiny-ner", "inputs": text}, timeout=60)
            assert response.status_code == 200, response.text
            return response.json()

        text = fresh("John lives in Paris")
        assert predict(text)["cached"] is False
        assert predict(text)["cached"] is True
        # Served from the cache until both levels have let it go; computed again then.
        poll(lambda: predict(text), lambda answer: answer["cached"] is False, timeout=10)
    finally:
        app.stop()
        w.stop()
