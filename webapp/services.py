"""The per-process objects the views share: jobs, workers, the model catalog."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from cachetools import TTLCache
from flask import Flask, current_app

from common.errors import ModelNotFound, ModelNotLoaded, NoWorkers
from common.settings import Settings
from model_store.store import ModelInfo, ModelStore
from webapp.jobs import JobService
from webapp.workers import WorkerDirectory

# How long the webapp trusts what it read of a model directory. A rebuilt
# or new model is seen within this many seconds.
CATALOG_TTL_S = 5.0


class ModelCatalog:
    """The model store, read through a short cache (the hot path asks per request)."""

    def __init__(self, store: ModelStore):
        self.store = store
        self._cache: TTLCache = TTLCache(maxsize=4096, ttl=CATALOG_TTL_S)
        self._lock = threading.Lock()

    def describe(self, model_id: str) -> ModelInfo:
        """The model's metadata; ModelNotFound when it is not a loadable model."""
        with self._lock:
            info = self._cache.get(model_id)
        if info is None:
            info = self.store.describe(model_id)
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

    def require_worker_for(self, model_id: str) -> list[dict]:
        """Live workers serving `model_id`; 503 with the reason when none."""
        serving = self.workers.serving(model_id)
        if serving:
            return serving
        if not self.workers.live():
            raise NoWorkers("no worker is running; start one with `celery -A tasks worker`")
        raise ModelNotLoaded(
            f"model {model_id!r} is in the store but no worker has it loaded "
            f"(start a worker with PRELOAD_MODELS={model_id})"
        )


def init_app(app: Flask, settings: Settings) -> None:
    jobs = app.config.get("JOB_SERVICE") or JobService(settings)
    workers = app.config.get("WORKER_DIRECTORY") or WorkerDirectory(jobs.redis, settings.heartbeat_s)
    app.extensions["atf"] = Services(
        settings=settings,
        jobs=jobs,
        workers=workers,
        catalog=ModelCatalog(ModelStore(settings.model_dir)),
    )


def services() -> Services:
    """The current app's services."""
    return current_app.extensions["atf"]
