"""Turning model placements (`{"replicas": N}`, `{"workers": [...]}`) into per-worker placements.

Every worker runs an assigner after each heartbeat, and once at start; the
webapp and the CLI run one right after a placement changes. One round at a
time holds ASSIGN_LOCK_KEY: it reads the model placements, the live
workers (their heartbeats, as the webapp and the reaper see them) and
each one's placement, decides with the pure function `assign`, and writes
the changes with common/lua/assign.lua, which writes nothing if the lock
is no longer this round's. Each worker's reconcile (tasks/model_manager.py)
then loads or unloads what its own placement says.

Why this converges without flapping or overshooting:
- the decision is counted on placements, not on what is loaded: a worker
  still loading a model already counts as one of its replicas, so no round
  adds another while the first load runs;
- one round at a time, fenced: rounds never interleave their writes;
- the choice is deterministic (least loaded first, then by name), and a
  model is only taken from a worker that is dead, no longer pinned, or one
  too many — preferring to keep those that already serve it.

A worker is live while its registry entry is fresh (MISSED_BEATS
heartbeats; the reaper deletes the entry of a dead worker). When a model's
worker dies, the round that places it elsewhere also drops it from the dead
worker's placement, so that worker does not load it again when it returns.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import redis

from common import lua
from common.deliveries import MISSED_BEATS
from common.placement import PLACEMENT_PREFIX, PRESENT, ModelPlacement, ModelPlacements, placement_key
from common.protocol import KEY_PREFIX, WORKERS_KEY, is_load_failure
from common.settings import DEFAULT_MAX_MODELS_PER_WORKER

log = logging.getLogger(__name__)

ASSIGN_LOCK_KEY = KEY_PREFIX + "assign-lock"
# Set for one heartbeat by the worker that runs the round of that heartbeat:
# however many workers there are, the cluster runs about one round per heartbeat.
ASSIGN_ROUND_KEY = KEY_PREFIX + "assign-round"
# One round takes milliseconds; an assigner that dies holding the lock
# delays the next round by at most this long.
ASSIGN_LOCK_TTL_S = 10.0
WANT, DROP = "want", "drop"


@dataclass(frozen=True)
class WorkerLoad:
    """What the assigner knows of one live worker."""

    name: str
    placed: frozenset[str] = frozenset()  # the models its placement names (loaded, loading or to load)
    serving: frozenset[str] = frozenset()  # the models it serves now
    failed: frozenset[str] = frozenset()  # the models it could not load
    capacity: int = DEFAULT_MAX_MODELS_PER_WORKER  # its MAX_MODELS_PER_WORKER
    free_bytes: int | None = None  # free device memory (GPU workers), None when not known

    @property
    def models(self) -> frozenset[str]:
        return self.placed | self.serving


@dataclass(frozen=True)
class Change:
    """One write to a worker's placement."""

    action: str  # WANT or DROP
    worker: str
    model_id: str
    task: str | None = None


@dataclass
class _Worker:
    """A worker's load as one round's decisions change it."""

    load: WorkerLoad
    models: set[str] = field(default_factory=set)
    free: int | None = None


def assign(placements: Iterable[ModelPlacement], live: Iterable[WorkerLoad],
           elsewhere: Mapping[str, Iterable[str]] | None = None,
           sizes: Mapping[str, int] | None = None) -> list[Change]:
    """The placement changes that give each model its workers (pure; deterministic).

    `elsewhere`: model id -> workers not live whose placement still names it.
    `sizes`: model id -> bytes of its files, checked against a worker's free
    device memory when it reports one. Models are decided in id order, each
    seeing the loads the ones before it left.
    """
    elsewhere = elsewhere or {}
    sizes = sizes or {}
    workers = {w.name: _Worker(w, set(w.models), w.free_bytes) for w in live}
    changes: list[Change] = []
    for placement in sorted(placements, key=lambda p: p.model_id):
        decide = _pinned if placement.workers is not None else _replicated
        changes += decide(placement, workers, sorted(elsewhere.get(placement.model_id, ())),
                          sizes.get(placement.model_id))
    return changes


def _pinned(placement: ModelPlacement, workers: dict[str, _Worker], dead: list[str], size) -> list[Change]:
    """The named workers, live or not (one that starts later loads it), and no other."""
    m, pinned = placement.model_id, set(placement.workers)
    changes = [Change(DROP, name, m) for name in dead if name not in pinned]
    for name, w in sorted(workers.items()):
        if m in w.load.placed and name not in pinned:
            changes.append(Change(DROP, name, m))
            w.models.discard(m)
    for name in sorted(pinned - set(dead)):
        w = workers.get(name)
        if w is None or (m not in w.load.placed and m not in w.load.failed):
            changes.append(Change(WANT, name, m, placement.task))
            if w is not None:
                _take(w, m, size)
    return changes


def _replicated(placement: ModelPlacement, workers: dict[str, _Worker], dead: list[str], size) -> list[Change]:
    """N live workers: keep the ones it has (serving first), add the least loaded with room, drop the dead."""
    m, n = placement.model_id, placement.wanted
    changes = [Change(DROP, name, m) for name in dead]
    holders = [w for w in workers.values() if m in w.load.placed and m not in w.load.failed]
    holders.sort(key=lambda w: (m not in w.load.serving, len(w.models), w.load.name))
    for w in holders[n:]:  # one too many: a comeback, a lowered count, an admin load
        changes.append(Change(DROP, w.load.name, m))
        w.models.discard(m)
    missing = n - min(n, len(holders))
    candidates = [w for w in workers.values()
                  if m not in w.load.placed and m not in w.load.failed and _has_room(w, m, size)]
    candidates.sort(key=lambda w: (len(w.models), w.load.name))
    for w in candidates[:missing]:
        changes.append(Change(WANT, w.load.name, m, placement.task))
        _take(w, m, size)
    return changes


def _has_room(w: _Worker, model_id: str, size: int | None) -> bool:
    if model_id not in w.models and len(w.models) >= w.load.capacity:
        return False
    return w.free is None or size is None or w.free >= size


def _take(w: _Worker, model_id: str, size: int | None) -> None:
    if model_id not in w.models:
        w.models.add(model_id)
        if w.free is not None and size is not None:
            w.free -= size


def live_entries(client: redis.Redis, heartbeat_s: float) -> dict[str, dict]:
    """name -> registry entry of each worker whose heartbeat is fresh (the webapp's rule)."""
    fresh_after = time.time() - MISSED_BEATS * heartbeat_s - 1.0
    out = {}
    for raw in client.hgetall(WORKERS_KEY).values():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("updated_at", 0) > fresh_after and entry.get("name"):
            out[entry["name"]] = entry
    return out


def worker_load(entry: dict, placed: Iterable[str]) -> WorkerLoad:
    """A live worker as the assigner sees it, from its registry entry and its placement."""
    gpu = (entry.get("memory") or {}).get("gpu") or {}
    return WorkerLoad(
        name=entry["name"], placed=frozenset(placed), serving=frozenset(entry.get("models") or {}),
        failed=frozenset(m for m, c in (entry.get("changing") or {}).items()
                         if isinstance(c, dict) and is_load_failure(c.get("state"))),
        capacity=int(entry.get("max_models") or DEFAULT_MAX_MODELS_PER_WORKER),
        free_bytes=gpu.get("free"))


def convergence(placement: ModelPlacement, live: Mapping[str, dict], placed_on: Iterable[str]) -> dict:
    """What GET /models shows of a placement: desired, assigned, actual, converged.

    `placed_on`: the workers whose placement names the model. Converged: the
    live workers serving it are exactly the ones it should have — its
    `replicas` assigned and loaded, or its pinned workers that are live.
    """
    serving = sorted(name for name, entry in live.items() if placement.model_id in (entry.get("models") or {}))
    assigned = sorted(name for name in placed_on if name in live)
    out = {**placement.as_dict(), "assigned_to": assigned, "serving_on": serving}
    if placement.workers is not None:
        expected = sorted(set(placement.workers) & set(live))
        out["not_live"] = sorted(set(placement.workers) - set(live))  # they load it when they start
    else:
        expected = assigned if len(assigned) == placement.wanted else None
    out["converged"] = expected is not None and serving == expected
    return out


def statuses(client: redis.Redis, placements: Mapping[str, ModelPlacement], live: Mapping[str, dict]) -> dict:
    """model id -> `convergence` of its placement, for each of `placements`, given the `live` workers' entries."""
    if not placements:
        return {}
    names, models = sorted(live), sorted(placements)
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hmget(placement_key(name), models)
        rows = pipe.execute()
    placed_on: dict[str, list[str]] = {}
    for name, row in zip(names, rows):
        for model_id, value in zip(models, row):
            if value is not None:
                placed_on.setdefault(model_id, []).append(name)
    return {m: convergence(p, live, placed_on.get(m, [])) for m, p in placements.items()}


class Assigner:
    """Runs assignment rounds against one Redis; any number of them may run at once."""

    def __init__(self, client: redis.Redis, heartbeat_s: float, size_of: Callable[[str], int | None] | None = None):
        self.redis = client
        self.heartbeat_s = heartbeat_s
        self.placements = ModelPlacements(client)
        self._size_of = size_of or (lambda model_id: None)
        self._sizes: dict[str, int | None] = {}
        self._apply = client.register_script(lua.source("assign"))

    def run_once(self, force: bool = False) -> list[Change] | None:
        """One round, unless another assigner is in one: the changes written (None: none written).

        Without `force` (the workers' heartbeats), only when no round ran in
        the last heartbeat; the webapp and the CLI force one after a change.
        """
        placements = self.placements.all()
        if not placements:
            return []
        token = uuid.uuid4().hex
        if not force and not self.redis.set(ASSIGN_ROUND_KEY, token, nx=True, px=max(1, int(self.heartbeat_s * 1000))):
            return None
        if not self.redis.set(ASSIGN_LOCK_KEY, token, nx=True, px=int(ASSIGN_LOCK_TTL_S * 1000)):
            return None
        try:
            live, elsewhere = self.view(placements)
            changes = assign(placements.values(), live, elsewhere, self._sizes_for(placements, live))
        except BaseException:
            self._apply(keys=[ASSIGN_LOCK_KEY], args=[token])  # releases the lock, writes nothing
            raise
        keys = [ASSIGN_LOCK_KEY] + [placement_key(c.worker) for c in changes]
        args = [token] + [v for c in changes for v in (c.action, c.model_id, c.task or "")]
        if not self._apply(keys=keys, args=args):
            log.warning("placement: an assignment round outlived its lock; its decisions were not written")
            return None
        for c in changes:
            log.info("placement: %s %s %s", c.worker, "should serve" if c.action == WANT else "should drop",
                     c.model_id)
        return changes

    def view(self, placements: Mapping[str, ModelPlacement]) -> tuple[list[WorkerLoad], dict[str, list[str]]]:
        """The live workers' loads, and per placed model the workers not live whose placement names it."""
        entries = live_entries(self.redis, self.heartbeat_s)
        names = sorted(entries)
        with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(placement_key(name))
            raw = pipe.execute()
        live = [worker_load(entries[name], [k.decode() for k in placed if k.decode() != PRESENT])
                for name, placed in zip(names, raw)]
        models = sorted(placements)
        elsewhere: dict[str, list[str]] = {}
        for key in self.redis.scan_iter(match=PLACEMENT_PREFIX + "*", count=200):
            name = key.decode()[len(PLACEMENT_PREFIX):]
            if name in entries:
                continue
            for model_id, value in zip(models, self.redis.hmget(key, models)):
                if value is not None:
                    elsewhere.setdefault(model_id, []).append(name)
        return live, elsewhere

    def _sizes_for(self, placements, live: list[WorkerLoad]) -> dict[str, int]:
        """Bytes of each placed model's files, read only when some worker reports its free device memory."""
        if all(w.free_bytes is None for w in live):
            return {}
        for model_id in placements:
            if model_id not in self._sizes:
                try:
                    self._sizes[model_id] = self._size_of(model_id)
                except Exception:  # noqa: BLE001 - an unreadable directory: no memory check for it
                    self._sizes[model_id] = None
        return {m: s for m, s in self._sizes.items() if m in placements and s is not None}
