"""Rate limits (webapp/ratelimit.py) at the HTTP level; the 429s themselves need Redis (integration)."""

import hashlib

from tests.helpers import CLOSED, assert_error, make_client
from webapp import ratelimit
from webapp.ratelimit import storage_uri

API = "api-token-1"


def test_off_by_default(model_dir):
    client = make_client(model_dir, workers=[])
    assert "atf_limiter" not in client.application.extensions


def test_requests_go_through_while_redis_is_down(model_dir):
    """The limiter cannot count: requests meet the outage themselves (503), never a 500 or a 429."""
    client = make_client(model_dir, workers=[], rate_limit="1/hour")
    assert "atf_limiter" in client.application.extensions
    for _ in range(3):
        assert_error(client.get("/jobs/abc"), 503, "broker_unavailable")


def test_the_budget_is_the_valid_token_else_the_address(model_dir):
    app = make_client(model_dir, workers=[], api_tokens=(API,), rate_limit="1/hour").application
    expected = "token:" + hashlib.sha256(API.encode()).hexdigest()[:32]
    with app.test_request_context("/jobs/x", headers={"Authorization": f"Bearer {API}"}):
        assert ratelimit.client_key() == expected
    for headers in ({}, {"Authorization": "Bearer guess"}):
        with app.test_request_context("/jobs/x", headers=headers, environ_base={"REMOTE_ADDR": "10.0.0.9"}):
            assert ratelimit.client_key() == "addr:10.0.0.9"


def test_health_metrics_and_docs_are_exempt(model_dir):
    app = make_client(model_dir, workers=[], rate_limit="1/hour").application
    for path, exempt in (("/health", True), ("/health/live", True), ("/health/ready", True), ("/metrics", True),
                         ("/docs", True), ("/openapi.json", True), ("/models", False),
                         ("/workers", False), ("/jobs/x", False)):
        with app.test_request_context(path):
            assert ratelimit._exempt() is exempt, path


def test_storage_uri_follows_redis_url():
    assert storage_uri(CLOSED) == CLOSED
    assert storage_uri("rediss://:pw@h:6380/2") == "rediss://:pw@h:6380/2"
    assert storage_uri("unix:///run/redis.sock?db=1") == "redis+unix:///run/redis.sock?db=1"
