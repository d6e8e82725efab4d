"""The per-process objects the views share: jobs, workers, the model catalog, the response cache."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from common.settings import Settings
from model_store.store import ModelStore
from webapp.catalog import ModelCatalog
from webapp.job_service import JobService
from webapp.model_admin import ModelAdmin
from webapp.response_cache import ResponseCache
from webapp.workers import WorkerDirectory


@dataclass
class Services:
    settings: Settings
    jobs: JobService
    workers: WorkerDirectory
    catalog: ModelCatalog
    admin: ModelAdmin
    cache: ResponseCache


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
