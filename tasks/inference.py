"""The inference task, `tasks.infer(model_id, inputs, parameters, is_list)`.

In a worker, messages of this task never reach `run()`: the batching
strategy (tasks.consumer) takes them and runs them in batches. `run()` is
what a direct call does (`infer("minilm", ["text"])`, `infer.apply(...)`):
the same model code, in this process, without a broker.
"""

from __future__ import annotations

import threading

import orjson

from common.budget import check_encoded_budget, check_request_budget
from common.params import validate_parameters
from common.protocol import INFER_TASK
from common.settings import get_settings
from model_store.store import ModelStore, default_parameters
from tasks import app

_local = threading.local()


def _local_models():
    from model_store.devices import detect_device
    from model_store.loaded_models import LoadedModels

    models = getattr(_local, "models", None)
    if models is None:
        settings = get_settings()
        device = detect_device(settings.worker_device)
        models = _local.models = LoadedModels(ModelStore(settings.model_dir), device)
    return models


@app.task(name=INFER_TASK, Strategy="tasks.consumer:batching_strategy", acks_late=True, typing=False)
def infer(model_id, inputs, parameters=None, is_list=None):
    """Run `inputs` through `model_id` and return outputs in the shape of `inputs`."""
    settings = get_settings()
    models = _local_models()
    loaded = models.load(model_id)
    single = not isinstance(inputs, list) if is_list is None else not is_list
    items = [inputs] if not isinstance(inputs, list) else inputs
    defaults = default_parameters(loaded.info, loaded.task)
    params = validate_parameters(loaded.task, parameters, defaults, settings.max_new_tokens)
    check_request_budget(loaded.task, params, items, settings, defaults, loaded.info.mask_token)
    encodings = loaded.runner.encode(items, params)
    check_encoded_budget(loaded.task, params, [enc.length for enc in encodings], settings)
    outputs = []
    for start in range(0, len(encodings), settings.max_batch_size):
        outputs.extend(loaded.runner.run(encodings[start:start + settings.max_batch_size], params))
    # Runners may return numpy arrays (feature-extraction: float32 vectors).
    # Celery's JSON serializer takes plain lists; through orjson they become
    # the floats of float32's shortest form, so its JSON is as compact.
    outputs = orjson.loads(orjson.dumps(outputs, option=orjson.OPT_SERIALIZE_NUMPY))
    return outputs[0] if single else outputs
