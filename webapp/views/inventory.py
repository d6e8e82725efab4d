"""GET /models and GET /workers: what the store holds and who serves it."""

from __future__ import annotations

from flask import Blueprint, jsonify

from webapp.services import services

bp = Blueprint("inventory", __name__)


@bp.get("/models")
def list_models():
    """Every model in the store, with the live workers it is loaded on and its placement, desired and actual."""
    svc = services()
    loaded_on: dict[str, list[str]] = {}
    changing: dict[str, dict[str, str]] = {}
    for worker in svc.workers.live():
        for model_id in worker.get("models", {}):
            loaded_on.setdefault(model_id, []).append(worker["name"])
        for model_id, change in worker.get("changing", {}).items():
            changing.setdefault(model_id, {})[worker["name"]] = change.get("state")
    sources = svc.admin.sources()
    placements = svc.admin.placements_status()
    models = []
    for info in svc.catalog.store.list():
        entry = {
            "model_id": info.model_id,
            "task": info.task,
            "loaded_on": loaded_on.get(info.model_id, []),
            "size_bytes": info.size_bytes,
            "complete": info.complete,
            # Desired (replicas or workers) against actual (serving_on), or None when no placement was set.
            "placement": placements.get(info.model_id),
        }
        if info.model_id in sources:
            entry["source"] = sources[info.model_id]
        if info.model_id in changing:
            entry["changing_on"] = changing[info.model_id]
        if info.problem:
            entry["problem"] = info.problem
        models.append(entry)
    return jsonify({"models": models})


@bp.get("/workers")
def list_workers():
    """Live workers: name, device, loaded models, consumed queues, jobs in hand."""
    return jsonify([
        {
            "name": w["name"],
            "device": w.get("device"),
            "models": sorted(w.get("models", {})),
            "queues": w.get("queues", []),
            "active": w.get("active", 0),
            "changing": w.get("changing", {}),
            "memory": w.get("memory", {}),
        }
        for w in services().workers.live()
    ])
