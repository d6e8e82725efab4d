"""The response cache as the webapp reads it: level 1 in this process, level 2 in Redis.

Per item: each input of a request is looked up on its own (level 1, then
one MGET for all level-1 misses), and only the misses go to a worker. The
workers write level 2 as they store results (tasks/reporting.py); this
process keeps what it reads or receives in level 1, a TTL LRU bounded by
entries and by bytes. Keys carry the fingerprint of the weights that
computed the output (common/cache_keys.py): a switched or reloaded model has a
new fingerprint, so its old entries are never read again.
"""

from __future__ import annotations

import threading

import orjson
import redis
from cachetools import TTLCache
from prometheus_client import Counter

from common.cache_keys import cache_key
from common.settings import Settings

# Named as Triton names its cache metrics (nv_cache_num_hits_per_model, ...).
CACHE_HITS = Counter("atf_cache_num_hits_per_model", "Response cache hits, per model and cache level",
                     ["model", "level"])
CACHE_MISSES = Counter("atf_cache_num_misses_per_model", "Response cache misses, per model and cache level",
                       ["model", "level"])
COALESCED = Counter("atf_cache_num_coalesced_per_model",
                    "Requests answered by an identical request already in flight", ["model"])


class ResponseCache:
    """Level 1 (this process) over level 2 (Redis), keyed per input item."""

    def __init__(self, settings: Settings, client: redis.Redis):
        self.enabled = settings.cache_ttl > 0
        self._redis = client
        self._max_items = settings.cache_l1_items
        self._l1: TTLCache = TTLCache(maxsize=settings.cache_l1_bytes, ttl=max(settings.cache_ttl, 1),
                                      getsizeof=len)
        self._lock = threading.Lock()

    def keys(self, fingerprint: str, task: str, items, params: dict) -> list[str]:
        return [cache_key(fingerprint, task, item, params) for item in items]

    def lookup(self, model_id: str, keys: list[str]) -> tuple[dict[int, bytes], str | None]:
        """Outputs (JSON bytes) by item index, and the level the last hit came from."""
        found: dict[int, bytes] = {}
        with self._lock:
            for index, key in enumerate(keys):
                value = self._l1.get(key)
                if value is not None:
                    found[index] = value
        level = "l1" if found else None
        l1_misses = len(keys) - len(found)
        if found:
            CACHE_HITS.labels(model_id, "l1").inc(len(found))
        if not l1_misses:
            return found, level
        CACHE_MISSES.labels(model_id, "l1").inc(l1_misses)
        missing = [i for i in range(len(keys)) if i not in found]
        try:
            values = self._redis.mget([keys[i] for i in missing])
        except (redis.RedisError, OSError):
            values = [None] * len(missing)  # a cache that cannot be read is a miss, not an error
        hits = 0
        for index, value in zip(missing, values):
            if value is not None:
                found[index] = value
                self._remember(keys[index], value)
                hits += 1
        if hits:
            CACHE_HITS.labels(model_id, "l2").inc(hits)
            level = "l2"
        if len(missing) - hits:
            CACHE_MISSES.labels(model_id, "l2").inc(len(missing) - hits)
        return found, level

    def holds(self, keys: list[str]) -> bool:
        """Whether level 1 has every key (no Redis, no metrics)."""
        with self._lock:
            return all(key in self._l1 for key in keys)

    def remember_outputs(self, keys, outputs) -> None:
        """Keep a finished job's outputs in level 1 (the worker wrote level 2)."""
        for key, output in zip(keys or (), outputs):
            if key is not None:
                self._remember(key, exact_copy(orjson.dumps(output)))

    def _remember(self, key: str, value: bytes) -> None:
        with self._lock:
            if len(self._l1) >= self._max_items and key not in self._l1:
                self._l1.popitem()  # entries bound, besides the bytes bound of maxsize
            try:
                self._l1[key] = value
            except ValueError:
                pass  # one value larger than the whole level: not kept


def exact_copy(value: bytes) -> bytes:
    """`value` in an allocation of its own size.

    orjson.dumps (3.13) returns bytes in a buffer of at least 64 KiB, however
    short the JSON: a 7 KB embedding kept as it comes holds 64 KiB, and a
    level 1 bounded at CACHE_L1_BYTES by len() held about 8x that.
    """
    return memoryview(value).tobytes()
