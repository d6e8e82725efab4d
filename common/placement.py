"""Which models each worker should serve: a desired state kept in Redis.

Load, unload and switch are Celery broadcasts, and a worker that is
restarting or briefly off the broker never sees one. So each change is
also recorded as the worker's *placement* (`atf:placement:<worker name>`,
a hash of model id -> task): the webapp writes it for the workers it
targets, and each worker for every change it makes itself (a load it was
asked for, an eviction). A worker that starts under a name loads what that
name served; a running worker compares what it serves with its placement
every few heartbeats and converges (tasks/model_manager.py).

A placement hash always holds the field PRESENT: a worker whose placement
is missing altogether (Redis lost it) re-records what it serves instead of
unloading everything.

Above the per-worker placements sits the *model placement* an operator
asks for (`PUT /models/<id>/placement`, `python -m model_store place`):
`{"replicas": N}` or `{"workers": [...]}` per model, in MODEL_PLACEMENTS_KEY.
No worker obeys it directly: an assigner (common/assignment.py) turns it
into per-worker placements, which each worker's reconcile then follows.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import redis

from common.protocol import KEY_PREFIX

PLACEMENT_PREFIX = KEY_PREFIX + "placement:"
PRESENT = "_present"  # the field every placement hash has, so "empty" and "missing" differ
MODEL_PLACEMENTS_KEY = KEY_PREFIX + "model-placements"  # hash: model id -> JSON ModelPlacement

# The most replicas (or pinned workers) one model may ask for: far past any
# cluster this runs on, low enough that a typo (1e9) is refused, not stored.
MAX_REPLICAS = 1000
# A worker's name as Celery writes it (`name@host`): no space, no control character.
WORKER_NAME_RE = re.compile(r"[A-Za-z0-9_.@:+%-]{1,255}")  # use fullmatch


def placement_key(worker: str) -> str:
    return PLACEMENT_PREFIX + worker


class Placement:
    """The desired models per worker name, in Redis."""

    def __init__(self, client: redis.Redis):
        self.redis = client

    def want(self, worker: str, model_id: str, task: str | None = None) -> None:
        """`worker` should serve `model_id` (as `task`, or the task its config names)."""
        self.redis.hset(placement_key(worker), mapping={PRESENT: "1", model_id: task or ""})

    def drop(self, worker: str, model_id: str) -> None:
        """`worker` should not serve `model_id`."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(placement_key(worker), PRESENT, "1")
            pipe.hdel(placement_key(worker), model_id)
            pipe.execute()

    def drop_everywhere(self, model_id: str) -> None:
        """No worker should serve `model_id`, including workers not running now."""
        for key in self.redis.scan_iter(match=PLACEMENT_PREFIX + "*", count=100):
            self.redis.hdel(key, model_id)

    def record(self, worker: str, models: dict[str, str | None]) -> None:
        """Set `worker`'s placement to exactly `models` (model id -> task)."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(placement_key(worker))
            pipe.hset(placement_key(worker), mapping={PRESENT: "1", **{m: t or "" for m, t in models.items()}})
            pipe.execute()

    def of(self, worker: str) -> dict[str, str | None] | None:
        """model id -> task (None: from its config) for `worker`; None when nothing is recorded."""
        raw = self.redis.hgetall(placement_key(worker))
        if not raw:
            return None
        return {k.decode(): (v.decode() or None) for k, v in raw.items() if k.decode() != PRESENT}


@dataclass(frozen=True)
class ModelPlacement:
    """Where an operator wants a model: on `replicas` workers the assigner picks, or on the named `workers`."""

    model_id: str
    replicas: int | None = None
    workers: tuple[str, ...] | None = None
    task: str | None = None  # the task to load it as; None: from its config

    @property
    def wanted(self) -> int:
        """How many workers should serve the model."""
        return len(self.workers) if self.workers is not None else int(self.replicas or 0)

    def as_dict(self) -> dict:
        out: dict = {"workers": list(self.workers)} if self.workers is not None else {"replicas": self.replicas}
        out["task"] = self.task
        return out


class ModelPlacements:
    """The model placements operators asked for, in Redis (MODEL_PLACEMENTS_KEY)."""

    def __init__(self, client: redis.Redis):
        self.redis = client

    def put(self, placement: ModelPlacement) -> None:
        """Record `placement`; zero replicas is no placement at all (`remove`)."""
        if placement.wanted == 0:
            self.remove(placement.model_id)
            return
        self.redis.hset(MODEL_PLACEMENTS_KEY, placement.model_id, json.dumps(placement.as_dict()))

    def remove(self, model_id: str) -> bool:
        """Forget the model's placement and take it off every worker; False when it had none."""
        removed = bool(self.redis.hdel(MODEL_PLACEMENTS_KEY, model_id))
        Placement(self.redis).drop_everywhere(model_id)
        return removed

    def all(self) -> dict[str, ModelPlacement]:
        """model id -> its placement; an entry that does not parse is left out."""
        out = {}
        for raw_id, raw in self.redis.hgetall(MODEL_PLACEMENTS_KEY).items():
            model_id = raw_id.decode()
            try:
                value = json.loads(raw)
                workers = value.get("workers")
                out[model_id] = ModelPlacement(model_id, replicas=value.get("replicas"),
                                               workers=tuple(workers) if workers is not None else None,
                                               task=value.get("task"))
            except (ValueError, TypeError, AttributeError):
                continue
        return out

    def of(self, model_id: str) -> ModelPlacement | None:
        return self.all().get(model_id)


def check_placement(replicas, workers) -> str | None:
    """Why `replicas` / `workers` is not a placement (None when it is one); shared by HTTP and CLI."""
    if (replicas is None) == (workers is None):
        return "give either replicas (a number of workers) or workers (a list of worker names), not both"
    if replicas is not None:
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 0 <= replicas <= MAX_REPLICAS:
            return f"replicas must be a whole number between 0 and {MAX_REPLICAS}"
        return None
    if not isinstance(workers, (list, tuple)) or not 1 <= len(workers) <= MAX_REPLICAS:
        return f"workers must be a list of 1 to {MAX_REPLICAS} worker names (to place it nowhere: replicas 0)"
    for name in workers:
        if not isinstance(name, str) or not WORKER_NAME_RE.fullmatch(name):
            return f"workers: {str(name)[:80]!r} is not a worker name (e.g. cpu@host; letters, digits, _.@:+%-)"
    if len(set(workers)) != len(workers):
        return "workers names a worker twice"
    return None
