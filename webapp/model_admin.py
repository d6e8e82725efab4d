"""Model management from the webapp: the same Celery control commands as the CLI.

The webapp broadcasts `load_model`, `unload_model` and `switch_model` to
the workers, then follows their registry entries until each says the model
is loaded, gone or switched (or the wait runs out), and answers with every
worker's state.

A model placement (`PUT /models/<id>/placement`) is only written to Redis,
followed by one assignment round at once (common/assignment.py); the
workers converge on it by themselves, and keep converging as workers join
and die.
"""

from __future__ import annotations

import threading
import time

import redis
from cachetools import TTLCache

from common import protocol
from common.assignment import Assigner, statuses
from common.errors import BrokerUnavailable, NoWorkers, PlacementManaged, ValidationFailed
from common.placement import ModelPlacement, ModelPlacements, Placement
from common.settings import Settings
from model_store.store import ModelStore
from webapp.publisher import make_celery_client
from webapp.workers import WorkerDirectory

# A broadcast collects the workers' immediate replies for this long.
REPLY_TIMEOUT_S = 2.0
POLL_S = 0.2
# One on-demand load per model at a time. Once a worker reports the model
# loading, the registry keeps others from asking again; the lock only
# covers the moment before that.
AUTOLOAD_LOCK_S = 15
SOURCES_TTL_S = 2.0


class ModelAdmin:
    """Loads, unloads and switches models on live workers."""

    def __init__(self, settings: Settings, client: redis.Redis, workers: WorkerDirectory):
        self.settings = settings
        self._redis = client
        self._workers = workers
        self.placement = Placement(client)
        self.model_placements = ModelPlacements(client)
        store = ModelStore(settings.model_dir)
        self._assigner = Assigner(client, settings.heartbeat_s,
                                  size_of=lambda model_id: store.describe(self.source_of(model_id)).size_bytes)
        self._celery = None
        self._lock = threading.Lock()
        # Every request thread reads the sources (GET /models, and the catalog
        # on a miss). A cachetools cache is not thread-safe, not even `get`,
        # which removes expired entries: unguarded, concurrent expiry and
        # refill raised KeyError('all') and could leave the cache raising on
        # every later call, until the process restarted.
        self._sources_lock = threading.Lock()
        self._sources: TTLCache = TTLCache(maxsize=1, ttl=SOURCES_TTL_S)
        self._sources_generation = 0  # bumped by set_source: a read begun before it is not kept

    @property
    def control(self):
        with self._lock:
            if self._celery is None:
                self._celery = make_celery_client(self.settings)
            return self._celery.control

    # -- which directory serves a model id --------------------------------

    def sources(self) -> dict[str, str]:
        """model id -> the directory a switch made serve it (cached briefly)."""
        with self._sources_lock:
            cached = self._sources.get("all")
            generation = self._sources_generation
        if cached is None:
            # Read outside the lock: a slow Redis must not hold up every request thread.
            try:
                raw = self._redis.hgetall(protocol.MODEL_SOURCES_KEY)
            except (redis.RedisError, OSError):
                raw = {}
            cached = {k.decode(): v.decode() for k, v in raw.items()}
            with self._sources_lock:
                if generation == self._sources_generation:  # else a switch came in while we read
                    self._sources["all"] = cached
        return cached

    def source_of(self, model_id: str) -> str:
        return self.sources().get(model_id, model_id)

    def set_source(self, model_id: str, source: str) -> None:
        try:
            if source == model_id:
                self._redis.hdel(protocol.MODEL_SOURCES_KEY, model_id)
            else:
                self._redis.hset(protocol.MODEL_SOURCES_KEY, model_id, source)
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnavailable("cannot record the switch in Redis") from exc
        with self._sources_lock:
            self._sources.clear()
            self._sources_generation += 1

    # -- commands ---------------------------------------------------------

    def load(self, model_id: str, task: str | None, names: list[str] | None, wait: float) -> dict:
        targets = self._targets(names)
        self.refuse_if_placed(model_id)
        # Recorded first: a target that misses the broadcast converges on it.
        self._record(lambda: [self.placement.want(name, model_id, task) for name in targets])
        replies = self._broadcast("load_model", {"model_id": model_id, "model_type": task}, targets)

        def state(entry):
            if model_id in entry.get("models", {}):
                return protocol.LOADED
            change = entry.get("changing", {}).get(model_id, {})
            if protocol.is_load_failure(change.get("state")):
                return protocol.load_failure(change.get("error"))
            return change.get("state", protocol.LOADING)

        def finished(s):
            return s == protocol.LOADED or protocol.is_load_failure(s)

        return self._follow(targets, replies, state, finished, wait)

    def unload(self, model_id: str, names: list[str] | None, wait: float) -> dict:
        self.refuse_if_placed(model_id)
        if not names:
            # Recorded even with no worker up: one restarting now must not bring the model back.
            self._record(lambda: self.placement.drop_everywhere(model_id))
            if not self._workers.live(fresh=True):
                return {}
        targets = self._targets(names)
        try:
            self._redis.delete(protocol.AUTOLOAD_KEY_PREFIX + model_id)  # a later request may load it again
        except (redis.RedisError, OSError):
            pass
        if names:  # recorded first: a target that misses the broadcast converges on it
            self._record(lambda: [self.placement.drop(name, model_id) for name in targets])
        replies = self._broadcast("unload_model", {"model_id": model_id}, targets)

        def state(entry):
            if model_id in entry.get("models", {}):
                return protocol.LOADED
            return entry.get("changing", {}).get(model_id, {}).get("state", "unloaded")

        return self._follow(targets, replies, state, lambda s: s == "unloaded", wait)

    def switch(self, model_id: str, source: str, fingerprint: str, wait: float) -> dict:
        """Serve `model_id` from `source` everywhere; follows the workers that have it loaded."""
        self.set_source(model_id, source)
        live = self._workers.live(fresh=True)
        if not live:
            return {}
        targets = [w["name"] for w in live if model_id in w.get("models", {})]
        if not targets:
            return {}
        replies = self._broadcast("switch_model", {"model_id": model_id, "source": source}, targets)

        def state(entry):
            model = entry.get("models", {}).get(model_id)
            if model is None:
                return "unloaded"
            if model.get("fingerprint") == fingerprint:
                return "switched"
            error = entry.get("changing", {}).get(model_id, {}).get("error")
            return protocol.load_failure(error) if error else "switching"

        return self._follow(targets, replies, state, lambda s: s != "switching", wait)

    def autoload(self, model_id: str, live: list[dict]) -> bool:
        """Load `model_id` on the least busy live worker, on demand, once; True if a load was asked for."""
        try:
            acquired = self._redis.set(protocol.AUTOLOAD_KEY_PREFIX + model_id, "1", nx=True, ex=AUTOLOAD_LOCK_S)
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnavailable("cannot reach Redis") from exc
        if not acquired:
            return False
        worker = min(live, key=lambda w: (len(w.get("models", {})), w.get("active", 0), w["name"]))
        # Any client may trigger this, so the load is marked on demand: the worker
        # never evicts one of its PRELOAD_MODELS for it. The placement is not
        # written here (the worker records it when it takes the load): a worker
        # converging on a placement would load it as an admin load. A worker
        # that misses the broadcast is asked again once the lock expires.
        try:
            self.control.broadcast("load_model",
                                   arguments={"model_id": model_id, "model_type": None, "on_demand": True},
                                   destination=[worker["name"]], reply=False)
        except Exception as exc:  # noqa: BLE001 - kombu raises many kinds when the broker is down
            raise BrokerUnavailable("cannot reach the workers") from exc
        return True

    # -- model placements -------------------------------------------------

    def placement_of(self, model_id: str) -> ModelPlacement | None:
        try:
            return self.model_placements.of(model_id)
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnavailable("cannot read the model placements from Redis") from exc

    def refuse_if_placed(self, model_id: str) -> None:
        """409 for a load or unload of a model whose placement decides where it runs."""
        placement = self.placement_of(model_id)
        if placement is not None:
            raise PlacementManaged(
                f"{model_id!r} has a placement ({placement.as_dict()}): it decides which workers serve it. "
                f"Change it with PUT /models/{model_id}/placement, or remove it with DELETE first")

    def place(self, placement: ModelPlacement, wait: float) -> dict:
        """Record `placement`, run an assignment round, follow the workers until converged or `wait` runs out."""
        self._record(lambda: self.model_placements.put(placement))
        try:
            self._assigner.run_once(force=True)  # the workers' own rounds follow within a heartbeat
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnavailable("cannot assign the placement in Redis") from exc
        deadline = time.monotonic() + wait
        while True:
            status = self.placements_status().get(placement.model_id) or {}
            if status.get("converged") or time.monotonic() >= deadline:
                return status
            time.sleep(POLL_S)

    def unplace(self, model_id: str, wait: float) -> tuple[bool, dict]:
        """Forget the model's placement and unload it everywhere: (whether it had one, each worker's state)."""
        try:
            removed = self.model_placements.remove(model_id)
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnavailable("cannot remove the placement in Redis") from exc
        return removed, self.unload(model_id, None, wait)

    def placements_status(self) -> dict[str, dict]:
        """model id -> desired and actual placement (common.assignment.convergence), for each placed model."""
        try:
            placements = self.model_placements.all()
            if not placements:
                return {}
            return statuses(self._redis, placements, {w["name"]: w for w in self._workers.live(fresh=True)})
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnavailable("cannot read the placements from Redis") from exc

    # -- helpers ----------------------------------------------------------

    def _record(self, write) -> None:
        try:
            write()
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnavailable("cannot record the placement in Redis") from exc

    def _targets(self, names: list[str] | None) -> list[str]:
        live = [w["name"] for w in self._workers.live(fresh=True)]
        if not live:
            raise NoWorkers("no worker is running; start one with `celery -A tasks worker`")
        if not names:
            return live
        unknown = sorted(set(names) - set(live))
        if unknown:
            raise ValidationFailed(f"no live worker named {', '.join(unknown)}; live: {', '.join(live)}",
                                   field="workers")
        return list(dict.fromkeys(names))

    def _broadcast(self, command: str, arguments: dict, targets: list[str]) -> dict:
        try:
            replies = self.control.broadcast(command, arguments=arguments, destination=targets, reply=True,
                                             timeout=REPLY_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - kombu raises many kinds when the broker is down
            raise BrokerUnavailable("cannot reach the workers") from exc
        out = {}
        for reply in replies or []:
            out.update(reply)
        return out

    def _follow(self, targets, replies, state, finished, wait: float) -> dict:
        """Each target's state, polled from the registry until all are finished or `wait` runs out."""
        deadline = time.monotonic() + wait
        states = {}
        while True:
            entries = {w["name"]: w for w in self._workers.live(fresh=True)}
            for name in targets:
                reply = replies.get(name, {})
                if "error" in reply:
                    states[name] = protocol.load_failure(reply["error"])
                elif name not in entries:
                    states[name] = "gone"
                elif entries[name].get("version", 0) < reply.get("version", 0):
                    # Written before the worker took the request (a failed load's
                    # error, say): wait for the entry that follows it.
                    states[name] = reply.get("state", "pending")
                else:
                    states[name] = state(entries[name])
            if all(finished(s) or protocol.is_load_failure(s) or s == "gone" for s in states.values()):
                return states
            if time.monotonic() >= deadline:
                return states
            time.sleep(POLL_S)
