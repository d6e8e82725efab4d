"""Inference: /predict (wait for the answer) and /jobs (submit, poll, cancel)."""

from __future__ import annotations

import time

import orjson
from flask import Blueprint, jsonify, url_for

from common import logcontext
from common.budget import check_request_budget
from common.params import validate_item, validate_parameters
from common.requestid import printable_id
from model_store.store import default_parameters
from webapp import admission
from webapp.body import read_body
from webapp.job_service import outcome
from webapp.metrics import JOBS
from webapp.requestids import request_id, traceparent
from webapp.schemas import PredictRequest, parse_json, parse_predict
from webapp.services import services

# Access: webapp/auth.py (API_TOKENS when set).
bp = Blueprint("predict", __name__)


class Accepted:
    """A validated request, with what the cache already knows of its items."""

    def __init__(self, req: PredictRequest, task: str, params: dict):
        self.req = req
        self.task = task
        self.params = params
        self.cached: dict[int, bytes] = {}
        self.cache_keys: list[str] | None = None
        self.cache_level: str | None = None

    @property
    def all_cached(self) -> bool:
        return self.cache_keys is not None and len(self.cached) == len(self.req.items)

    def cached_result(self):
        outputs = [orjson.Fragment(self.cached[i]) for i in range(len(self.req.items))]
        return outputs if self.req.is_list else outputs[0]

    def prefilled(self) -> dict:
        return {i: orjson.loads(value) for i, value in self.cached.items()}

    def coalescing_key(self) -> str | None:
        """Identical requests (model, task, inputs, parameters) may share one job; sampled ones may not."""
        req = self.req
        if self.params.get("do_sample"):
            return None
        return orjson.dumps([req.model_id, self.task, req.items, self.params, req.is_list, req.use_cache],
                            option=orjson.OPT_SORT_KEYS).hex()


def _accept() -> Accepted:
    """Validate the body, the model, its parameters and inputs; read the cache; check a worker serves it."""
    svc = services()
    settings = svc.settings
    req = parse_predict(parse_json(read_body()), settings)
    logcontext.bind(model_id=req.model_id)  # until the request ends (webapp/accesslog.py)
    info = svc.catalog.describe(req.model_id)
    task = admission.task_of(svc, req.model_id, info)
    defaults = default_parameters(info, task)
    params = validate_parameters(task, req.parameters, defaults, settings.max_new_tokens)
    for i, item in enumerate(req.items):
        validate_item(task, item, f"inputs[{i}]" if req.is_list else "inputs", settings.max_input_chars,
                      info.mask_token)
    check_request_budget(task, params, req.items, settings, defaults, info.mask_token)
    accepted = Accepted(req, task, params)
    accepted.cached, accepted.cache_keys, accepted.cache_level = admission.cached_outputs(
        svc, req.model_id, task, req.items, params, req.use_cache)
    if not accepted.all_cached:  # a hit never touches the queue, nor needs a worker
        admission.require_worker_for(svc, req.model_id)
    return accepted


def _accepted(job_id: str, status: str = "queued"):
    location = url_for("predict.get_job", job_id=job_id)
    response = jsonify({"job_id": job_id, "status": status, "status_url": location})
    response.status_code = 202
    response.headers["Location"] = location
    return response


def _submit(acc: Accepted, wait: bool):
    """Queue the job, or join an identical one in flight; (None, None) when one finished since the cache read."""
    req = acc.req
    svc = services()
    # An identical job can finish between this request's cache read and its
    # submit: its outputs are in level 1 by then (see predict), so look again
    # rather than run it a second time.
    settled = (lambda: svc.cache.holds(acc.cache_keys)) if wait and acc.cache_keys else None
    job = svc.jobs.submit(
        req.model_id, req.items, req.is_list, acc.params, wait=wait, timeout=req.timeout, use_cache=req.use_cache,
        prefilled=acc.prefilled(), coalesce=acc.coalescing_key() if wait else None,
        request_id=request_id(), traceparent=traceparent(), settled=settled)
    if job[0] is not None:
        logcontext.bind(job_id=job[0])
        JOBS.labels(req.model_id).inc()
    return job


def _answer_cached(acc: Accepted, started: float):
    req = acc.req
    return jsonify({
        "job_id": None,  # nothing was queued
        "model_id": req.model_id,
        "status": "succeeded",
        "result": acc.cached_result(),
        "cached": True,
        "timings": {"cache": acc.cache_level, "total_ms": round((time.monotonic() - started) * 1000, 3)},
    })


@bp.post("/predict")
def predict():
    """Run inputs through a model; answer when done or after options.wait seconds."""
    started = time.monotonic()
    acc = _accept()
    req = acc.req
    if acc.all_cached:
        return _answer_cached(acc, started)
    svc = services()
    while (job := _submit(acc, wait=req.wait > 0))[0] is None:  # an identical job finished meanwhile
        acc.cached, acc.cache_level = svc.cache.lookup(req.model_id, acc.cache_keys)
        if acc.all_cached:  # (unless its entries expired right then)
            return _answer_cached(acc, started)
    job_id, waiter = job
    if waiter is None:
        return _accepted(job_id)
    try:
        payload = svc.jobs.wait(waiter, req.wait)
        if payload is None:
            return _accepted(job_id)
        status, result, error = outcome(payload)
        if error is not None:
            error.details["job_id"] = job_id
            raise error
        # before leaving: an identical request that finds no job in flight looks here
        svc.cache.remember_outputs(payload.get("cache_keys"), result if req.is_list else [result])
    finally:
        svc.jobs.leave(waiter)
    svc.jobs.delivered(job_id)  # the client has the result: its keys need not live RESULT_TTL
    timings = dict(payload.get("timings") or {})
    if acc.cached:
        timings["cached_items"] = len(acc.cached)
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
    acc = _accept()
    if acc.all_cached:
        result = orjson.loads(orjson.dumps(acc.cached_result()))
        job_id = services().jobs.store_completed(acc.req.model_id, result, request_id(), traceparent())
        logcontext.bind(job_id=job_id)
        return _accepted(job_id, status="succeeded")
    job_id, _ = _submit(acc, wait=False)
    return _accepted(job_id)


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    """A job's status, with its result or error once finished."""
    logcontext.bind(job_id=printable_id(job_id))  # the client's text: logged only if printable
    return jsonify(services().jobs.status(job_id))


@bp.delete("/jobs/<job_id>")
def cancel_job(job_id: str):
    """Cancel a job that has not started running."""
    logcontext.bind(job_id=printable_id(job_id))
    return jsonify(services().jobs.cancel(job_id))
