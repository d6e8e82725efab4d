"""Integration fixtures: the session's worker serving minilm, the webapp, an HTTP client.

The worker is `celery -A tasks worker` and the webapp is
`gunicorn 'webapp:create_app()'`, both as subprocesses, talking through the
session's Redis (tests/conftest.py). Tests stay independent through unique
job ids and by reading counters as differences, and each module starts
with no placement left by another (see `_no_placements_from_other_modules`).
"""

from __future__ import annotations

import pytest
import redis
import requests

from common.placement import MODEL_PLACEMENTS_KEY, PLACEMENT_PREFIX
from tests.helpers import Webapp, Worker, service_env


@pytest.fixture(scope="module", autouse=True)
def _no_placements_from_other_modules(redis_url):
    """Forget the placements earlier modules left in the session's Redis.

    Worker names repeat between modules (`second@test`), and a worker that
    starts under a name serves again what its placement says: without this,
    a module's fresh worker would load what another module's namesake
    served, and take jobs for models the module thinks are its own. A
    session worker's placement is recorded again from what it serves.
    """
    client = redis.Redis.from_url(redis_url)
    client.delete(MODEL_PLACEMENTS_KEY, *client.scan_iter(match=PLACEMENT_PREFIX + "*", count=1000))


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
