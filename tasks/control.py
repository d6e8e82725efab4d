"""Remote-control commands: the stock Celery CLI manages models on live workers.

    celery -A tasks control load_model <model_id> [model_type]
    celery -A tasks control unload_model <model_id>
    celery -A tasks control switch_model <model_id> <source>
    celery -A tasks inspect loaded_models

The webapp's /models/* endpoints broadcast the same commands. They run on
each worker's consumer thread and answer at once with the model's state;
the work itself happens on the worker's model manager thread.
"""

from __future__ import annotations

from celery.worker.control import control_command, inspect_command

from common.errors import ValidationFailed
from common.params import normalize_task


def _serving(state):
    return state.consumer.atf_serving


@control_command(args=[("model_id", str), ("model_type", str)], signature="<model_id> [model_type]")
def load_model(state, model_id, model_type=None, on_demand=False, **_):
    """Load a model on this worker (in the background; the reply says its state).

    `on_demand` (sent by the webapp's AUTOLOAD, not settable from the CLI):
    the load may not evict one of this worker's PRELOAD_MODELS.
    """
    try:
        task = normalize_task(model_type)
    except ValidationFailed as exc:
        return {"error": exc.message, "model_id": model_id}
    return _serving(state).manager.request_load(model_id, task, on_demand=on_demand is True)


@control_command(args=[("model_id", str)], signature="<model_id>")
def unload_model(state, model_id, **_):
    """Stop serving a model and free its memory (jobs not started go back to the queue)."""
    return _serving(state).manager.request_unload(model_id)


@control_command(args=[("model_id", str), ("source", str)], signature="<model_id> <source>")
def switch_model(state, model_id, source, **_):
    """Serve model_id from the model directory `source` (a new version), without a failed job."""
    return _serving(state).manager.request_switch(model_id, source)


@inspect_command()
def loaded_models(state, **_):
    """Models on this worker: task, source directory, fingerprint, state."""
    serving = _serving(state)
    out = {}
    for model in serving.models.loaded().values():
        out[model.model_id] = {"task": model.task, "source": model.source, "fingerprint": model.fingerprint,
                               "device": model.device, "state": serving.manager.state_of(model.model_id)}
    for model_id, info in list(serving.manager.states.items()):
        out.setdefault(model_id, dict(info))
    return out
