"""Secure by default, against real gunicorn and worker processes: tokens, the admin loopback rule,
on-demand loads that never evict a preloaded model, and rate limits shared by every webapp process."""

import concurrent.futures as futures
import re
import socket
import time
import uuid
from urllib.parse import urlparse, urlunparse

import psutil
import pytest
import redis
import requests

from common import protocol
from devtools.redis_server import free_port
from tests.helpers import SENTENCES, Webapp, Worker, poll, service_env, wait_for_status


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def other_database(url: str, db: int) -> str:
    """The same Redis server, database `db`: a cluster of its own (registry, queues, broadcasts)."""
    parts = urlparse(url)
    if parts.path.strip("/") == str(db):
        db += 1
    return urlunparse(parts._replace(path=f"/{db}"))


def external_address() -> str | None:
    """An IPv4 address of this machine that is not loopback, if it has one."""
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family == socket.AF_INET and not addr.address.startswith("127."):
                return addr.address
    return None


def app_api(app: Webapp):
    """What tests.helpers.wait_for_status needs of an API client."""

    class Api:
        def get(self, path, **kw):
            return requests.get(app.url + path, timeout=60, **kw)

    return Api()


def stopped_log(app: Webapp) -> str:
    app.stop()
    return app.log_path.read_text()


# -- API_TOKENS and ADMIN_TOKEN ------------------------------------------------


@pytest.fixture
def tokens():
    return {"api": f"api-{uuid.uuid4().hex}", "api2": f"api2-{uuid.uuid4().hex}",
            "admin": f"admin-{uuid.uuid4().hex}"}


def test_tokens_guard_inference_and_admin_and_never_reach_the_log(redis_url, model_dir, log_dir, worker, tokens):
    """gunicorn with API_TOKENS and ADMIN_TOKEN: 401 without, 200 with an API token, 403 for admin with it,
    admin works with ADMIN_TOKEN; no token in any answer or in the webapp's DEBUG log with access lines."""
    env = service_env(redis_url, model_dir, api_tokens=f"{tokens['api']},{tokens['api2']}",
                      admin_token=tokens["admin"], log_level="DEBUG", WEB_ACCESS_LOG="-")
    app = Webapp(env, log_dir, "--workers", "2", "--threads", "8").wait_ready()
    url = app.url
    answers = []

    def call(method, path, **kw):
        response = requests.request(method, url + path, timeout=120, **kw)
        answers.append(response)
        return response

    try:
        body = {"model_id": "minilm", "inputs": SENTENCES[5]}
        missing = call("POST", "/predict", json=body)
        assert missing.status_code == 401 and missing.json()["error"]["type"] == "unauthorized"
        assert missing.headers["WWW-Authenticate"] == 'Bearer realm="inference"'
        assert call("POST", "/predict", json=body, headers=bearer("guess")).status_code == 401
        served = call("POST", "/predict", json=body, headers=bearer(tokens["api"]))
        assert served.status_code == 200, served.text
        assert len(served.json()["result"]) == 384
        assert call("POST", "/predict", json=body, headers=bearer(tokens["admin"])).status_code == 200

        queued = call("POST", "/jobs", json={"model_id": "minilm", "inputs": SENTENCES[6]},
                      headers=bearer(tokens["api2"]))
        assert queued.status_code == 202, queued.text
        job = queued.headers["Location"]
        assert call("GET", job).status_code == 401
        assert call("DELETE", job).status_code == 401
        assert call("GET", job, headers=bearer(tokens["api"])).status_code == 200
        not_json = call("POST", "/predict", data=b'{"model_id": "minilm", "inputs": "x"}',
                        headers={**bearer(tokens["api"]), "Content-Type": "text/plain"})
        assert not_json.status_code == 415 and not_json.json()["error"]["type"] == "unsupported_media_type"

        load = {"model_id": "minilm", "workers": [worker.name]}
        assert call("POST", "/models/load", json=load).status_code == 401
        assert call("POST", "/models/load", json=load, headers=bearer("guess")).status_code == 401
        refused = call("POST", "/models/load", json=load, headers=bearer(tokens["api"]))
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "forbidden"
        admin = call("POST", "/models/load", json=load, headers=bearer(tokens["admin"]))
        assert admin.status_code == 200 and admin.json()["workers"] == {worker.name: "loaded"}

        for path in ("/health", "/workers", "/models", "/metrics", "/openapi.json", "/docs"):
            assert call("GET", path).status_code in (200, 503), path  # open, token or not
    finally:
        log = stopped_log(app)
    assert "POST /predict" in log and "POST /models/load" in log  # the access log was on: the search means something
    for response in answers:
        seen = response.text + str(response.headers)
        assert all(token not in seen for token in tokens.values()), response.request.url
    for token in tokens.values():
        assert token not in log


def test_admin_without_a_token_answers_loopback_only(redis_url, model_dir, log_dir, worker):
    """ADMIN_TOKEN unset: /models/load from another address is 403 (X-Forwarded-For does not help); from
    127.0.0.1 it works. Inference stays open from anywhere."""
    address = external_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to call from")
    port = free_port()
    app = Webapp(service_env(redis_url, model_dir), log_dir, "--bind", f"{address}:{port}").wait_ready()
    outside = f"http://{address}:{port}"
    try:
        load = {"model_id": "minilm", "workers": [worker.name]}
        for headers in ({}, {"X-Forwarded-For": "127.0.0.1"}, {"X-Real-IP": "127.0.0.1"}):
            refused = requests.post(outside + "/models/load", json=load, headers=headers, timeout=60)
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"]["type"] == "forbidden" and "ADMIN_TOKEN" in refused.text
        local = requests.post(app.url + "/models/load", json=load, timeout=60)
        assert local.status_code == 200 and local.json()["workers"] == {worker.name: "loaded"}
        served = requests.post(outside + "/predict", json={"model_id": "minilm", "inputs": SENTENCES[7]}, timeout=60)
        assert served.status_code == 200, served.text
    finally:
        app.stop()


# -- AUTOLOAD never evicts a preloaded model ----------------------------------


def test_on_demand_loads_never_evict_a_preloaded_model(redis_url, model_dir, log_dir):
    """MAX_MODELS_PER_WORKER=2, PRELOAD_MODELS=tiny-ner,tiny-fill-mask, a cluster of its own (Redis db):
    an on-demand load fails with the reason; an admin load evicts a preloaded model as before; a later
    on-demand load evicts the non-preloaded one even though it ran last."""
    url = other_database(redis_url, 7)
    redis.Redis.from_url(url).flushdb()
    preloaded = {"tiny-ner", "tiny-fill-mask"}
    w = Worker("pinned", service_env(url, model_dir, preload_models="tiny-ner,tiny-fill-mask",
                                     max_models_per_worker=2), log_dir).wait_ready()
    app = Webapp(service_env(url, model_dir), log_dir, "--workers", "1").wait_ready()

    def models():
        return set(w.entry()["models"])

    def changing(model_id):
        return w.entry().get("changing", {}).get(model_id, {})

    try:
        assert models() == preloaded
        # 1. An on-demand load with only preloaded models to evict: refused, both stay.
        queued = requests.post(app.url + "/jobs", json={"model_id": "tiny-gpt2", "inputs": "Once upon a time"},
                               timeout=60)
        assert queued.status_code == 202, queued.text
        deadline = time.monotonic() + 60
        while not protocol.is_load_failure(changing("tiny-gpt2").get("state")):
            assert time.monotonic() < deadline, w.entry()
            time.sleep(0.2)
        reason = changing("tiny-gpt2")["error"]
        assert "PRELOAD_MODELS" in reason and "tiny-fill-mask" in reason and "tiny-ner" in reason
        assert models() == preloaded
        refused = requests.post(app.url + "/predict", json={"model_id": "tiny-gpt2", "inputs": "Once upon a time"},
                                timeout=60)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["type"] == "model_not_loaded" and "GET /workers" in refused.text
        shown = requests.get(app.url + "/workers", timeout=10).text  # where the answer points for the reason
        assert "PRELOAD_MODELS" in shown and "tiny-gpt2" in shown, shown

        # 2. An admin load keeps today's rule: the least recently used goes, preloaded or not.
        loaded = requests.post(app.url + "/models/load", json={"model_id": "tiny-gpt2"}, timeout=120)
        assert loaded.json()["workers"] == {w.name: "loaded"}, loaded.text
        kept = models() & preloaded
        assert len(kept) == 1 and "tiny-gpt2" in models()
        # The job of step 1 runs now; tiny-gpt2 is the most recently used model.
        assert wait_for_status(app_api(app), queued.json()["job_id"], {"succeeded"})["status"] == "succeeded"

        # 3. On demand again: the preloaded model that is left stays, though it ran longest ago.
        asked = requests.post(app.url + "/predict", json={"model_id": "tiny-zero-shot", "inputs": "I love it",
                                                          "parameters": {"candidate_labels": ["good", "bad"]},
                                                          "options": {"wait": 120}}, timeout=180)
        assert asked.status_code == 200, asked.text
        # The registry entry is rewritten on the worker's heartbeat thread, after the model's queue is served.
        poll(models, lambda m: m == kept | {"tiny-zero-shot"}, timeout=10)
    finally:
        app.stop()
        w.stop()
    assert "unloading tiny-gpt2, the least recently used, to load tiny-zero-shot" in w.log()


# -- RATE_LIMIT ------------------------------------------------------------------


def test_rate_limit_is_shared_by_every_webapp_process(redis_url, tmp_path, log_dir, rdb, tokens):
    """RATE_LIMIT=10/hour, 2 gunicorn processes: each token gets exactly 10 answers in all, then 429 with
    Retry-After; without a valid token the address has its own 10; health and metrics are never limited;
    Redis holds the counters under the token's hash, never the token."""
    limit = 10
    env = service_env(redis_url, tmp_path, api_tokens=f"{tokens['api']},{tokens['api2']}",  # no model needed
                      rate_limit=f"{limit}/hour", WEB_ACCESS_LOG="-")
    app = Webapp(env, log_dir, "--workers", "2", "--threads", "4",
                 "--access-logformat", "pid=%(p)s %(r)s %(s)s").wait_ready()
    probe = f"/jobs/{uuid.uuid4().hex}"  # 404 job_not_found: Redis answers, no worker needed

    def get(headers=None):
        # A new connection each time, so both processes take requests.
        return requests.get(app.url + probe, headers={"Connection": "close", **(headers or {})}, timeout=60)

    def pids():
        return set(re.findall(r"pid=<?(\d+)>? GET /jobs/", app.log_path.read_text()))

    try:
        statuses = []
        with futures.ThreadPoolExecutor(8) as pool:
            while len(statuses) < 200 and (len(statuses) < 3 * limit or len(pids()) < 2):
                statuses += [r.status_code for r in pool.map(lambda _: get(bearer(tokens["api"])), range(16))]
        assert len(pids()) == 2, "both gunicorn processes answered"
        assert statuses.count(404) == limit and statuses.count(429) == len(statuses) - limit, statuses

        limited = get(bearer(tokens["api"]))
        assert limited.status_code == 429
        assert limited.json()["error"]["type"] == "rate_limited"
        assert 0 < int(limited.headers["Retry-After"]) <= 3600

        assert get(bearer(tokens["api2"])).status_code == 404  # another token, its own budget
        anonymous = [get().status_code for _ in range(limit)] + [get(bearer("guess")).status_code]
        assert anonymous == [401] * limit + [429]  # unknown tokens count against the address

        for path in ("/health", "/metrics", "/openapi.json"):
            assert requests.get(app.url + path, timeout=60).status_code in (200, 503), path
    finally:
        log = stopped_log(app)
    keys = [k.decode() for k in rdb.scan_iter("atf:ratelimit*")]
    assert keys, "the counters live in Redis"
    for token in tokens.values():
        assert token not in log and all(token not in k for k in keys)
