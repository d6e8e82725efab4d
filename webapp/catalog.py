"""The model store as the webapp reads it: through a short cache, per model id."""

from __future__ import annotations

import threading

from cachetools import TTLCache

from common.errors import ModelNotFound
from model_store.store import ModelInfo, ModelStore

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
