"""POST /models/load, /models/unload, /models/switch, PUT|DELETE /models/<id>/placement: manage models."""

from __future__ import annotations

from flask import Blueprint, jsonify
from pydantic import BaseModel

from common.errors import ModelNotFound, ValidationFailed
from common.params import normalize_task
from common.placement import ModelPlacement
from webapp.body import read_body
from webapp.schemas import LoadBody, SwitchBody, UnloadBody, parse_admin, parse_json, parse_placement
from webapp.services import services

# Access: webapp/auth.py (ADMIN_TOKEN, or loopback only while it is unset).
bp = Blueprint("admin", __name__)


def _body(model: type[BaseModel]) -> BaseModel:
    return parse_admin(parse_json(read_body()), model)


@bp.post("/models/load")
def load_model():
    """Load a model on the named workers (default: all live workers)."""
    body = _body(LoadBody)
    svc = services()
    task = normalize_task(body.model_type)
    svc.catalog.describe(body.model_id)  # 404 when it is not in the store
    states = svc.admin.load(body.model_id, task, body.workers, body.wait)
    return jsonify({"model_id": body.model_id, "workers": states})


@bp.post("/models/unload")
def unload_model():
    """Unload a model from the named workers (default: all live workers)."""
    body = _body(UnloadBody)
    svc = services()
    model_id = body.model_id
    # 404 like load and switch; a model still loaded somewhere (its directory since removed) can be unloaded.
    if not svc.catalog.store.exists(model_id) and not any(
            model_id in w.get("models", {}) or model_id in w.get("changing", {})
            for w in svc.workers.live(fresh=True)):
        raise ModelNotFound(f"model {model_id!r} is not in the store nor loaded on any worker")
    states = svc.admin.unload(model_id, body.workers, body.wait)
    return jsonify({"model_id": model_id, "workers": states})


@bp.post("/models/switch")
def switch_model():
    """Serve model_id from the model directory `source` (a new version), with no failed request."""
    body = _body(SwitchBody)
    svc = services()
    model_id, source = body.model_id, body.source
    current = svc.catalog.describe(model_id)
    new = svc.catalog.store.describe(source)
    if not new.complete:
        raise ValidationFailed(f"model {source!r} is not loadable: {new.problem}", field="source")
    if new.task != current.task:
        raise ValidationFailed(f"{source!r} is a {new.task} model; {model_id!r} serves {current.task}",
                               field="source")
    states = svc.admin.switch(model_id, source, new.fingerprint, body.wait)
    svc.catalog.forget(model_id)
    return jsonify({"model_id": model_id, "source": source, "fingerprint": new.fingerprint, "workers": states})


@bp.put("/models/<model_id>/placement")
def place_model(model_id: str):
    """Serve a model on `replicas` live workers, or on the named `workers`; kept in Redis, converged on by workers."""
    svc = services()
    body = parse_placement(parse_json(read_body()))
    try:
        task = normalize_task(body.task)
    except ValidationFailed as exc:
        raise ValidationFailed(exc.message.replace("model_type", "task", 1), field="task") from None
    svc.catalog.describe(model_id)  # 404 when it is not in the store
    placement = ModelPlacement(model_id, replicas=body.replicas,
                               workers=tuple(body.workers) if body.workers is not None else None, task=task)
    if placement.wanted == 0:
        removed, states = svc.admin.unplace(model_id, body.wait)
        return jsonify({"model_id": model_id, "placement": None, "removed": removed, "workers": states})
    return jsonify({"model_id": model_id, "placement": svc.admin.place(placement, body.wait)})


@bp.delete("/models/<model_id>/placement")
def unplace_model(model_id: str):
    """Remove a model's placement and unload it from every worker (as `{"replicas": 0}`)."""
    svc = services()
    if not svc.catalog.store.exists(model_id) and svc.admin.placement_of(model_id) is None:
        raise ModelNotFound(f"model {model_id!r} is not in the store and has no placement")
    removed, states = svc.admin.unplace(model_id, 0.0)
    return jsonify({"model_id": model_id, "placement": None, "removed": removed, "workers": states})
