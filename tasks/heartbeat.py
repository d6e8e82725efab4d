"""The worker's entry in the registry the webapp reads (WORKERS_KEY).

Every few seconds the worker writes what it serves; the webapp treats an
entry older than three intervals as a dead worker. After each beat the
worker's own periodic duties run on this thread too (`on_tick`: the
delivery heartbeat, looking for dead workers, converging on the models it
should serve).
"""

from __future__ import annotations

import json
import logging
import threading
import time

import redis

from common.protocol import REGISTRY_CHANNEL, WORKERS_KEY

log = logging.getLogger(__name__)


class Heartbeat:
    """Refreshes this worker's registry entry on a background thread."""

    def __init__(self, redis_url: str, name: str, interval: float, state, on_tick=lambda: None):
        self._redis = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
        self.name = name
        self.interval = interval
        self._state = state  # callable -> dict
        self._on_tick = on_tick
        self._stop = threading.Event()
        self._poke = threading.Event()
        self._last_serving = None
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self.beat()
        self._thread.start()
        return self

    def poke(self) -> None:
        """Write the entry soon (a model's state changed), from any thread."""
        self._poke.set()

    def beat(self) -> None:
        """Write the entry now (also after a model is loaded or unloaded)."""
        try:
            state = self._state()
        except Exception:  # noqa: BLE001 - a missed beat is better than a dead heartbeat thread
            log.exception("cannot describe this worker for its heartbeat")
            return
        entry = dict(state, name=self.name, updated_at=time.time())
        serving = json.dumps([state.get("models"), state.get("changing")], sort_keys=True)
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(WORKERS_KEY, self.name, json.dumps(entry))
                if serving != self._last_serving:
                    pipe.publish(REGISTRY_CHANNEL, self.name)
                pipe.execute()
            self._last_serving = serving
        except (redis.RedisError, OSError) as exc:
            log.warning("heartbeat not written: %s", exc)

    def stop(self) -> None:
        """Stop beating and remove the entry: the webapp sees the worker gone at once."""
        self._stop.set()
        self._poke.set()
        self._thread.join(self.interval + 1)
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(WORKERS_KEY, self.name)
                pipe.publish(REGISTRY_CHANNEL, self.name)
                pipe.execute()
        except (redis.RedisError, OSError):
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poke.wait(self.interval)
            self._poke.clear()
            if self._stop.is_set():
                break
            self.beat()
            try:
                self._on_tick()
            except Exception:  # noqa: BLE001 - the heartbeat must survive anything
                log.exception("periodic worker duty failed")
