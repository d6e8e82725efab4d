"""The per-process objects the views share: jobs, workers, the model catalog."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from cachetools import TTLCache
from flask import Flask, current_app

from common import protocol
from common.errors import BrokerUnavailable, ModelNotFound, ModelNotLoaded, NoWorkers, ValidationFailed
from common.settings import Settings
from model_store.store import ModelInfo, ModelStore
from webapp.job_service import JobService
from webapp.model_admin import ModelAdmin
from webapp.response_cache import ResponseCache
from webapp.workers import WorkerDirectory

# How long the webapp trusts what it read of a model directory. A rebuilt
# or new model is seen within this many seconds.
CATALOG_TTL_S = 5.0


class ModelCatalog:
    """The model store, read through a short cache (the hot path asks per request).

    A model id that was switched is described by the directory serving it.
    """

    def __init__(self, store: ModelStore, source_of=lambda model_id: model_id):
        self.store = store
        self._source_of = source_of
        self._cache: TTLCache = TTLCache(maxsize=4096, ttl=CATALOG_TTL_S)
        self._lock = threading.Lock()

    def forget(self, model_id: str) -> None:
        with self._lock:
            self._cache.pop(model_id, None)

    def describe(self, model_id: str) -> ModelInfo:
        """The model's metadata; ModelNotFound when it is not a loadable model."""
        with self._lock:
            info = self._cache.get(model_id)
        if info is None:
            self.store.path_for(model_id)  # the id itself must be in the store
            info = self.store.describe(self._source_of(model_id))
            with self._lock:
                self._cache[model_id] = info
        if not info.complete:
            raise ModelNotFound(f"model {model_id!r} is in the store but not loadable: {info.problem}")
        return info


@dataclass
class Services:
    settings: Settings
    jobs: JobService
    workers: WorkerDirectory
    catalog: ModelCatalog
    admin: ModelAdmin
    cache: ResponseCache

    def fingerprint_of(self, model_id: str) -> str | None:
        """The fingerprint of the weights serving `model_id`, if all its live workers agree."""
        try:
            fingerprints = {w["models"][model_id].get("fingerprint") for w in self.workers.serving(model_id)}
        except BrokerUnavailable:
            return None
        return fingerprints.pop() if len(fingerprints) == 1 else None

    def cached_outputs(self, model_id: str, task: str, items, params: dict, use_cache: bool):
        """(outputs by item index as JSON bytes, per-item cache keys, level) — nothing when bypassed.

        Sampled generations are never cached; during a switch, when workers
        disagree about the weights, the cache is not read.
        """
        if not (use_cache and self.cache.enabled) or params.get("do_sample"):
            return {}, None, None
        # The listener carries the workers' registry-change events: started,
        # it drops a stale fingerprint the moment a model is switched.
        self.jobs.listener.ensure_started(timeout=0)  # no wait: it subscribes within milliseconds
        fingerprint = self.fingerprint_of(model_id)
        if fingerprint is None:
            return {}, None, None
        keys = self.cache.keys(fingerprint, task, items, params)
        found, level = self.cache.lookup(model_id, keys)
        return found, keys, level

    def task_of(self, model_id: str, info: ModelInfo) -> str:
        """The task a model is served as: what its workers loaded it as, else what its config says."""
        try:
            serving = self.workers.serving(model_id)
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

    def require_worker_for(self, model_id: str) -> None:
        """Return when a live worker serves (or is loading) `model_id`; 503 with the reason when none.

        With AUTOLOAD on, a model no worker has loaded is loaded on the
        least busy live worker, and the request waits for it like any job.
        """
        if self.workers.serving(model_id):
            return
        live = self.workers.live()
        if not live:
            raise NoWorkers("no worker is running; start one with `celery -A tasks worker`")
        changes = [w.get("changing", {}).get(model_id, {}) for w in live]
        if any(change.get("state") == protocol.LOADING for change in changes):
            return
        failed = [change["error"] for change in changes if protocol.is_load_failure(change.get("state"))]
        if self.settings.autoload:
            if self.admin.autoload(model_id, live) or not failed:
                return
            # The last on-demand load failed, and it is too soon to try again.
            # What the worker reported (an exception's text) is in GET /workers for operators.
            raise ModelNotLoaded(f"model {model_id!r} could not be loaded; GET /workers shows why")
        raise ModelNotLoaded(
            f"model {model_id!r} is in the store but no worker has it loaded "
            f"(AUTOLOAD is off: POST /models/load, or start a worker with PRELOAD_MODELS={model_id})"
        )


def init_app(app: Flask, settings: Settings) -> None:
    jobs = app.config.get("JOB_SERVICE") or JobService(settings)
    workers = app.config.get("WORKER_DIRECTORY") or WorkerDirectory(jobs.redis, settings.heartbeat_s)
    admin = ModelAdmin(settings, jobs.redis, workers)
    jobs.listener.on_registry_change(getattr(workers, "invalidate", lambda: None))
    app.extensions["atf"] = Services(
        settings=settings,
        jobs=jobs,
        workers=workers,
        catalog=ModelCatalog(ModelStore(settings.model_dir), admin.source_of),
        admin=admin,
        cache=ResponseCache(settings, jobs.results),
    )


def services() -> Services:
    """The current app's services."""
    return current_app.extensions["atf"]
