"""Integration fixtures: the session's worker serving minilm, the webapp, an HTTP client.

The worker is `celery -A tasks worker` and the webapp is
`gunicorn 'webapp:create_app()'`, both as subprocesses, talking through the
session's Redis (tests/conftest.py). Tests stay independent through unique
job ids and by reading counters as differences.
"""

from __future__ import annotations

import pytest
import requests

from tests.helpers import Webapp, Worker, service_env


@pytest.fixture(scope="session")
def worker(redis_url, model_dir, log_dir):
    """The session's worker, serving `minilm`."""
    w = Worker("main", service_env(redis_url, model_dir, preload_models="minilm"), log_dir).wait_ready()
    yield w
    w.stop()


@pytest.fixture(scope="session")
def webapp(redis_url, model_dir, log_dir):
    app = Webapp(service_env(redis_url, model_dir), log_dir, "--workers", "2", "--threads", "32").wait_ready()
    yield app
    app.stop()


@pytest.fixture
def api(webapp, worker):
    """An HTTP session against the running webapp, with a worker serving minilm."""
    session = requests.Session()
    base = webapp.url

    class Api:
        url = base

        def get(self, path, **kw):
            return session.get(base + path, timeout=kw.pop("timeout", 60), **kw)

        def post(self, path, **kw):
            return session.post(base + path, timeout=kw.pop("timeout", 60), **kw)

        def delete(self, path, **kw):
            return session.delete(base + path, timeout=kw.pop("timeout", 60), **kw)

    yield Api()
    session.close()
