"""Which models each worker should serve: a desired state kept in Redis.

Load, unload and switch are Celery broadcasts, and a worker that is
restarting or briefly off the broker never sees one. So each change is
also recorded as the worker's *placement* (`atf:placement:<worker name>`,
a hash of model id -> task): the webapp writes it for the workers it
targets, and each worker for every change it makes itself (a load it was
asked for, an eviction). A worker that starts under a name loads what that
name served; a running worker compares what it serves with its placement
every few heartbeats and converges (tasks/management.py).

A placement hash always holds the field PRESENT: a worker whose placement
is missing altogether (Redis lost it) re-records what it serves instead of
unloading everything.
"""

from __future__ import annotations

import redis

from common.protocol import KEY_PREFIX

PLACEMENT_PREFIX = KEY_PREFIX + "placement:"
PRESENT = "_present"  # the field every placement hash has, so "empty" and "missing" differ


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
