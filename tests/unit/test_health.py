"""The health probes: liveness without I/O, readiness with the reason, draining after SIGTERM."""

import threading

import pytest

from tests.helpers import make_client
from webapp import drain


@pytest.fixture
def fresh_drain(monkeypatch):
    """A process that has not been told to drain, whatever an earlier test did."""
    monkeypatch.setattr(drain, "_draining", threading.Event())


def test_live_answers_with_redis_down(model_dir, fresh_drain):  # noqa: F811
    """/health/live touches nothing: 200 while broker and result store are unreachable."""
    response = make_client(model_dir).get("/health/live")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_ready_and_health_give_the_reason(model_dir, fresh_drain):  # noqa: F811
    """/health/ready and /health: 503 naming what is down."""
    client = make_client(model_dir)
    for path in ("/health/ready", "/health"):
        response = client.get(path)
        assert response.status_code == 503, path
        assert response.get_json()["status"] == "unavailable" and "unreachable" in response.get_json()["message"]


def test_ready_is_503_draining_while_live_stays_200(model_dir, fresh_drain):  # noqa: F811
    """Once draining, readiness says so (no I/O asked) and liveness still answers."""
    client = make_client(model_dir, workers=[{"name": "w", "models": {"minilm": {}}}])
    drain.begin()
    for path in ("/health/ready", "/health"):
        response = client.get(path)
        assert response.status_code == 503 and response.get_json()["status"] == "draining", path
        assert "draining" in response.get_json()["message"]
    assert client.get("/health/live").status_code == 200
