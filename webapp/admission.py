"""What a prediction needs decided before it is queued: its task, its cached outputs, a worker to run it."""

from __future__ import annotations

from common import protocol
from common.errors import BrokerUnavailable, ModelNotLoaded, NoWorkers, ValidationFailed
from model_store.store import ModelInfo
from webapp.services import Services


def fingerprint_of(svc: Services, model_id: str) -> str | None:
    """The fingerprint of the weights serving `model_id`, if all its live workers agree."""
    try:
        fingerprints = {w["models"][model_id].get("fingerprint") for w in svc.workers.serving(model_id)}
    except BrokerUnavailable:
        return None
    return fingerprints.pop() if len(fingerprints) == 1 else None


def cached_outputs(svc: Services, model_id: str, task: str, items, params: dict, use_cache: bool):
    """(outputs by item index as JSON bytes, per-item cache keys, level) — nothing when bypassed.

    Sampled generations are never cached; during a switch, when workers
    disagree about the weights, the cache is not read.
    """
    if not (use_cache and svc.cache.enabled) or params.get("do_sample"):
        return {}, None, None
    # The listener carries the workers' registry-change events: started,
    # it drops a stale fingerprint the moment a model is switched.
    svc.jobs.listener.ensure_started(timeout=0)  # no wait: it subscribes within milliseconds
    fingerprint = fingerprint_of(svc, model_id)
    if fingerprint is None:
        return {}, None, None
    keys = svc.cache.keys(fingerprint, task, items, params)
    found, level = svc.cache.lookup(model_id, keys)
    return found, keys, level


def task_of(svc: Services, model_id: str, info: ModelInfo) -> str:
    """The task a model is served as: what its workers loaded it as, else what its config says."""
    try:
        serving = svc.workers.serving(model_id)
    except BrokerUnavailable:
        serving = []  # the request will be refused for that a moment later
    for worker in serving:
        task = worker["models"][model_id].get("task")
        if task:
            return task
    if info.task is None:
        raise ValidationFailed(f"the task of model {model_id!r} is not known from its config; "
                               "load it with POST /models/load and a model_type", field="model_id")
    return info.task


def require_worker_for(svc: Services, model_id: str) -> None:
    """Return when a live worker serves (or is loading) `model_id`; 503 with the reason when none.

    With AUTOLOAD on, a model no worker has loaded is loaded on the
    least busy live worker, and the request waits for it like any job.
    """
    if svc.workers.serving(model_id):
        return
    live = svc.workers.live()
    if not live:
        raise NoWorkers("no worker is running; start one with `celery -A tasks worker`")
    changes = [w.get("changing", {}).get(model_id, {}) for w in live]
    if any(change.get("state") == protocol.LOADING for change in changes):
        return
    failed = [change["error"] for change in changes if protocol.is_load_failure(change.get("state"))]
    if svc.settings.autoload:
        if svc.admin.autoload(model_id, live) or not failed:
            return
        # The last on-demand load failed, and it is too soon to try again.
        # What the worker reported (an exception's text) is in GET /workers for operators.
        raise ModelNotLoaded(f"model {model_id!r} could not be loaded; GET /workers shows why")
    raise ModelNotLoaded(
        f"model {model_id!r} is in the store but no worker has it loaded "
        f"(AUTOLOAD is off: POST /models/load, or start a worker with PRELOAD_MODELS={model_id})"
    )
