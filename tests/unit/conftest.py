"""Unit fixtures: a model directory with one fake model, for the Flask app's tests; the real Redis, database 15."""

import os

import pytest
import redis

from tests.helpers import make_model

REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture
def model_dir(tmp_path):
    make_model(tmp_path, "minilm")
    return tmp_path


@pytest.fixture
def client():
    """The real Redis, database 15, flushed before and after (skipped without it, a failure when CI is set)."""
    conn = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=5)
    try:
        conn.ping()
    except (redis.RedisError, OSError) as exc:
        reason = f"no Redis at {REDIS_URL} ({exc}); these tests need one"
        if os.environ.get("CI"):
            pytest.fail(reason)
        print(reason)
        pytest.skip(reason)
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()
