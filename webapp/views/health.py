"""GET /health: is the service able to answer inference requests?"""

from __future__ import annotations

from flask import Blueprint, jsonify

from common.errors import BrokerUnavailable
from webapp.services import services

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    """200 when broker and result store answer and a worker is alive, else 503."""
    svc = services()
    problems = []
    broker_problem = svc.jobs.check_broker()
    if broker_problem:
        problems.append(f"broker unreachable: {broker_problem}")
    results_problem = svc.jobs.check_results()
    if results_problem:
        problems.append(f"result store unreachable: {results_problem}")
    workers = []
    try:
        workers = svc.workers.live(fresh=True)
    except BrokerUnavailable as exc:
        problems.append(exc.message)
    else:
        if not workers:
            problems.append("no worker is alive (start one with `celery -A tasks worker`)")
    models: dict[str, list[str]] = {}
    for worker in workers:
        for model_id in worker.get("models", {}):
            models.setdefault(model_id, []).append(worker["name"])
    body = {
        "broker": "unreachable" if broker_problem else "ok",
        "result_backend": "unreachable" if results_problem else "ok",
        "workers": [w["name"] for w in workers],
        "models": models,
    }
    if problems:
        return jsonify({"status": "unavailable", "message": "; ".join(problems), **body}), 503
    return jsonify({"status": "ok", "message": "API and Models are ready.", **body})
