"""The models loaded on this worker, guarded by a lock."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from model_store.store import ModelInfo, ModelStore


@dataclass
class LoadedModel:
    """A model in memory on this worker, ready to run.

    `model_id` is the id clients use; `info` describes the directory its
    weights came from, which is another one after a switch.
    """

    model_id: str
    info: ModelInfo
    runner: object
    task: str
    device: str
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0  # reading the weights onto the device, start to end

    @property
    def source(self) -> str:
        return self.info.model_id

    @property
    def fingerprint(self) -> str:
        return self.info.fingerprint


class LoadedModels:
    """load / replace / unload of the models on one device, and which are loaded."""

    def __init__(self, store: ModelStore, device: str):
        self.store = store
        self.device = device
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def build(self, model_id: str, task: str | None = None, source: str | None = None) -> LoadedModel:
        """Load weights for `model_id` (from directory `source`, default itself) without adding them."""
        from model_store.loader import load_runner

        started = time.perf_counter()
        info = self.store.describe(source or model_id)
        runner = load_runner(info, self.device, task)
        return LoadedModel(model_id=model_id, info=info, runner=runner, task=runner.task, device=self.device,
                           load_seconds=time.perf_counter() - started)

    def load(self, model_id: str, task: str | None = None, source: str | None = None) -> LoadedModel:
        """Load and add `model_id` (a no-op when it is loaded already)."""
        with self._lock:
            loaded = self._models.get(model_id)
        if loaded is not None:
            return loaded
        loaded = self.build(model_id, task, source)
        with self._lock:
            return self._models.setdefault(model_id, loaded)

    def replace(self, loaded: LoadedModel) -> LoadedModel | None:
        """Put a new version of a model in place; return the one it replaces."""
        with self._lock:
            old = self._models.get(loaded.model_id)
            self._models[loaded.model_id] = loaded
            return old

    def unload(self, model_id: str) -> LoadedModel | None:
        """Forget `model_id`; return what was loaded (the caller drops it)."""
        with self._lock:
            return self._models.pop(model_id, None)

    def loaded(self) -> dict[str, LoadedModel]:
        with self._lock:
            return dict(self._models)
