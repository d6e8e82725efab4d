"""The models loaded on this worker, guarded by a lock."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from common.errors import ModelNotLoaded
from model_store.store import ModelInfo, ModelStore


@dataclass
class LoadedModel:
    """A model in memory on this worker, ready to run."""

    info: ModelInfo
    runner: object
    task: str
    device: str
    loaded_at: float = field(default_factory=time.time)

    @property
    def model_id(self) -> str:
        return self.info.model_id

    @property
    def fingerprint(self) -> str:
        return self.info.fingerprint


class ModelRegistry:
    """load / unload / get of the models on one device."""

    def __init__(self, store: ModelStore, device: str):
        self.store = store
        self.device = device
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def load(self, model_id: str, task: str | None = None) -> LoadedModel:
        """Load `model_id` from the store (a no-op when it is loaded already)."""
        from model_store.loader import load_runner

        with self._lock:
            loaded = self._models.get(model_id)
            if loaded is not None:
                return loaded
        info = self.store.describe(model_id)
        runner = load_runner(info, self.device, task)
        loaded = LoadedModel(info=info, runner=runner, task=runner.task, device=self.device)
        with self._lock:
            self._models[model_id] = loaded
        return loaded

    def unload(self, model_id: str) -> bool:
        """Forget `model_id`; True when it was loaded."""
        with self._lock:
            return self._models.pop(model_id, None) is not None

    def get(self, model_id: str) -> LoadedModel:
        """The loaded model; ModelNotLoaded when this worker does not have it."""
        try:
            return self._models[model_id]
        except KeyError:
            raise ModelNotLoaded(f"model {model_id!r} is not loaded on this worker") from None

    def loaded(self) -> dict[str, LoadedModel]:
        with self._lock:
            return dict(self._models)
