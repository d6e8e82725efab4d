"""Inference: /predict (wait for the answer) and /jobs (submit, poll, cancel)."""

from __future__ import annotations

import time

from flask import Blueprint, jsonify, request, url_for

from common.params import validate_item, validate_parameters
from model_store.store import default_parameters
from webapp.jobs import outcome
from webapp.metrics import JOBS
from webapp.schemas import PredictRequest, parse_json, parse_predict
from webapp.services import services

bp = Blueprint("predict", __name__)


def _accept() -> tuple[PredictRequest, dict]:
    """Validate the body, the model, its parameters and inputs; check a worker serves it."""
    svc = services()
    settings = svc.settings
    req = parse_predict(parse_json(request.get_data(cache=False)), settings)
    info = svc.catalog.describe(req.model_id)
    task = svc.task_of(req.model_id, info)
    params = validate_parameters(task, req.parameters, default_parameters(info, task), settings.max_new_tokens)
    for i, item in enumerate(req.items):
        validate_item(task, item, f"inputs[{i}]" if req.is_list else "inputs", settings.max_input_chars,
                      info.mask_token)
    svc.require_worker_for(req.model_id)
    return req, params


def _accepted(job_id: str, status: str = "queued"):
    location = url_for("predict.get_job", job_id=job_id)
    response = jsonify({"job_id": job_id, "status": status, "status_url": location})
    response.status_code = 202
    response.headers["Location"] = location
    return response


@bp.post("/predict")
def predict():
    """Run inputs through a model; answer when done or after options.wait seconds."""
    started = time.monotonic()
    req, params = _accept()
    jobs = services().jobs
    job_id, waiter = jobs.submit(req.model_id, req.items, req.is_list, params, wait=req.wait > 0,
                                 timeout=req.timeout)
    JOBS.labels(req.model_id).inc()
    payload = jobs.wait(waiter, req.wait) if waiter is not None else None
    if payload is None:
        return _accepted(job_id)
    status, result, error = outcome(payload)
    if error is not None:
        error.details["job_id"] = job_id
        raise error
    timings = dict(payload.get("timings") or {})
    timings["total_ms"] = round((time.monotonic() - started) * 1000, 2)
    return jsonify({
        "job_id": job_id,
        "model_id": req.model_id,
        "status": status,
        "result": result,
        "cached": False,
        "timings": timings,
    })


@bp.post("/jobs")
def create_job():
    """Queue inputs for a model; poll the returned status_url for the result."""
    req, params = _accept()
    job_id, _ = services().jobs.submit(req.model_id, req.items, req.is_list, params, wait=False,
                                       timeout=req.timeout)
    JOBS.labels(req.model_id).inc()
    return _accepted(job_id)


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    """A job's status, with its result or error once finished."""
    return jsonify(services().jobs.status(job_id))


@bp.delete("/jobs/<job_id>")
def cancel_job(job_id: str):
    """Cancel a job that has not started running."""
    return jsonify(services().jobs.cancel(job_id))
