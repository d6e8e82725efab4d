"""Health probes: is the process alive, and is the service able to answer inference requests?

- `GET /health/live`: the process answers; no I/O, so a slow Redis never
  gets a live process restarted (Kubernetes' livenessProbe).
- `GET /health/ready`: broker and result store answer and a live worker
  serves at least one model (a worker still loading its models is not
  ready: TorchServe #3047); 503 with the reason while this process drains
  (SIGTERM) or the service is degraded (Kubernetes' readinessProbe, a load
  balancer's check).
- `GET /health`: the same as /health/ready (the original endpoint).
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from common.errors import BrokerUnavailable
from webapp import drain
from webapp.services import services

bp = Blueprint("health", __name__)

DRAINING_MESSAGE = "draining: this process is shutting down and finishes the requests it holds"


@bp.get("/health/live")
def live():
    """200 as long as the process answers HTTP."""
    return jsonify({"status": "ok"})


@bp.get("/health")
@bp.get("/health/ready")
def ready():
    """200 when broker and result store answer and a live worker serves a model, else 503 with the reason."""
    if drain.is_draining():  # no I/O: the answer must not wait on a Redis that may be going away too
        return jsonify({"status": "draining", "message": DRAINING_MESSAGE}), 503
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
    if workers and not models:
        changing = sorted({f"{m} {c.get('state')}" for w in workers for m, c in (w.get("changing") or {}).items()})
        problems.append("no worker serves a model yet: " + (
            ", ".join(changing) if changing else "none asked for (PRELOAD_MODELS, or POST /models/load)"))
    body = {
        "broker": "unreachable" if broker_problem else "ok",
        "result_backend": "unreachable" if results_problem else "ok",
        "workers": [w["name"] for w in workers],
        "models": models,
    }
    if problems:
        return jsonify({"status": "unavailable", "message": "; ".join(problems), **body}), 503
    return jsonify({"status": "ok", "message": "API and Models are ready.", **body})
