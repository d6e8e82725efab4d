"""POST /models/load, /models/unload, /models/switch: manage models on live workers."""

from __future__ import annotations

from flask import Blueprint, jsonify

from common.errors import ModelNotFound, ValidationFailed
from common.params import normalize_task
from common.settings import MAX_WAIT_S, MODEL_ID_RE
from webapp.body import read_body
from webapp.schemas import parse_json
from webapp.services import services

# Access: webapp/auth.py (ADMIN_TOKEN, or loopback only while it is unset).
bp = Blueprint("admin", __name__)

DEFAULT_ADMIN_WAIT_S = 120.0


def _body(allowed: tuple[str, ...], required: tuple[str, ...]) -> dict:
    body = parse_json(read_body())
    if not isinstance(body, dict):
        raise ValidationFailed("request body must be a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ValidationFailed(f"unknown field(s): {', '.join(unknown)}; accepted: {', '.join(allowed)}",
                               field=unknown[0])
    for name in required:
        if name not in body:
            raise ValidationFailed(f"{name} is required", field=name)
    for name in ("model_id", "source"):
        if name in body and (not isinstance(body[name], str) or not MODEL_ID_RE.fullmatch(body[name])):
            raise ValidationFailed(f"{name} must be a model id (^[A-Za-z0-9][A-Za-z0-9._-]{{0,63}}$)", field=name)
    workers = body.get("workers")
    if workers is not None and (not isinstance(workers, list) or not all(isinstance(w, str) for w in workers)):
        raise ValidationFailed("workers must be a list of worker names", field="workers")
    wait = body.get("wait", DEFAULT_ADMIN_WAIT_S)
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= MAX_WAIT_S:
        raise ValidationFailed(f"wait must be a number of seconds between 0 and {MAX_WAIT_S:g}", field="wait")
    body["wait"] = float(wait)
    return body


@bp.post("/models/load")
def load_model():
    """Load a model on the named workers (default: all live workers)."""
    body = _body(("model_id", "model_type", "workers", "wait"), ("model_id",))
    svc = services()
    task = normalize_task(body.get("model_type"))
    svc.catalog.describe(body["model_id"])  # 404 when it is not in the store
    states = svc.admin.load(body["model_id"], task, body.get("workers"), body["wait"])
    return jsonify({"model_id": body["model_id"], "workers": states})


@bp.post("/models/unload")
def unload_model():
    """Unload a model from the named workers (default: all live workers)."""
    body = _body(("model_id", "workers", "wait"), ("model_id",))
    svc = services()
    model_id = body["model_id"]
    # 404 like load and switch; a model still loaded somewhere (its directory since removed) can be unloaded.
    if not svc.catalog.store.exists(model_id) and not any(
            model_id in w.get("models", {}) or model_id in w.get("changing", {})
            for w in svc.workers.live(fresh=True)):
        raise ModelNotFound(f"model {model_id!r} is not in the store nor loaded on any worker")
    states = svc.admin.unload(model_id, body.get("workers"), body["wait"])
    return jsonify({"model_id": model_id, "workers": states})


@bp.post("/models/switch")
def switch_model():
    """Serve model_id from the model directory `source` (a new version), with no failed request."""
    body = _body(("model_id", "source", "wait"), ("model_id", "source"))
    svc = services()
    model_id, source = body["model_id"], body["source"]
    current = svc.catalog.describe(model_id)
    new = svc.catalog.store.describe(source)
    if not new.complete:
        raise ValidationFailed(f"model {source!r} is not loadable: {new.problem}", field="source")
    if new.task != current.task:
        raise ValidationFailed(f"{source!r} is a {new.task} model; {model_id!r} serves {current.task}",
                               field="source")
    states = svc.admin.switch(model_id, source, new.fingerprint, body["wait"])
    svc.catalog.forget(model_id)
    return jsonify({"model_id": model_id, "source": source, "fingerprint": new.fingerprint, "workers": states})
