"""The webapp's view of live workers, read from the registry they keep in Redis."""

from __future__ import annotations

import json
import time

import redis

from common.errors import BrokerUnavailable
from common.protocol import WORKERS_KEY

# Re-read the registry at most this often per process: the hot path asks
# "does a live worker serve this model?" on every request.
CACHE_S = 1.0


class WorkerDirectory:
    """Live workers, from the heartbeats they write to WORKERS_KEY."""

    def __init__(self, client: redis.Redis, heartbeat_s: float):
        self._redis = client
        # A worker is dead after missing three heartbeats in a row.
        self._stale_after = 3 * heartbeat_s + 1.0
        # (read at, workers, epoch). Request threads share the list: callers
        # must not change it. `invalidate` (the result-listener thread) starts
        # a new epoch, so a read made before a registry change and stored
        # after it is never served: swapping the tuple needs no lock.
        self._cached: tuple[float, list[dict], object] | None = None
        self._epoch = object()

    def invalidate(self) -> None:
        """Forget the cached registry: the next question reads Redis."""
        self._epoch = object()
        self._cached = None

    def live(self, fresh: bool = False) -> list[dict]:
        """Every worker whose last heartbeat is recent, sorted by name."""
        now = time.monotonic()
        epoch = self._epoch
        cached = self._cached
        if not fresh and cached and cached[2] is epoch and now - cached[0] < CACHE_S:
            return cached[1]
        try:
            raw = self._redis.hgetall(WORKERS_KEY)
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnavailable("cannot read the worker registry from Redis") from exc
        wall = time.time()
        workers = []
        for value in raw.values():
            try:
                entry = json.loads(value)
            except ValueError:
                continue
            if wall - entry.get("updated_at", 0) <= self._stale_after:
                workers.append(entry)
        workers.sort(key=lambda w: w.get("name", ""))
        self._cached = (now, workers, epoch)
        return workers

    def serving(self, model_id: str) -> list[dict]:
        """Live workers that have `model_id` loaded and consume its queue."""
        return [w for w in self.live() if model_id in w.get("models", {})]
