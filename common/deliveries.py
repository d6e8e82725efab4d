"""Deliveries on the Redis broker: which worker holds which job message.

kombu's Redis transport pops a message (BRPOP) and records it as unacked
in a second round trip: a worker killed between the two loses the message.
And a dead worker's unacked messages come back only after the visibility
timeout, an hour by default, because nothing tells a slow worker from a
dead one. So on a Redis broker the workers fetch inference jobs themselves
(tasks/fetcher.py), and every message they take is a *delivery* held by
one *holder* — a worker process, named `<worker name>#<session>`:

- `fetch` moves messages from a queue into the holder's deliveries hash
  in one Lua script: a message is always in its queue or held by exactly
  one holder.
- The reporter acknowledges a delivery in the same script that stores the
  job's result (common/lua/store_results.lua).
- A holder beats every HEARTBEAT_S (`beat`, Redis's clock). Whoever sees a
  holder silent for three beats — any worker, or the webapp — runs `reap`:
  one script gives every delivery it held back to the front of its queue
  and leaves a tombstone, exactly once however many processes try at once.
  A holder that finds its tombstone (it was paused, not dead) drops what
  it held and starts a new session.
- A live holder gives deliveries back with `hand_back` (warm shutdown,
  unload): at once, to the front of the queue.

Nothing here depends on how long a job runs: a live worker's two-minute
generation is never handed to another worker, and a dead worker's jobs
are back within three heartbeats plus one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass

import redis

from common import lua, protocol
from common.envelope import PRIORITY_STEPS, lists_of, queue_of

log = logging.getLogger(__name__)

HOLDERS_KEY = protocol.KEY_PREFIX + "holders"  # set of holders alive or not yet reaped
BEATS_KEY = protocol.KEY_PREFIX + "beats"  # zset: holder -> time of its last beat (Redis clock)
DELIVERIES_PREFIX = protocol.KEY_PREFIX + "deliveries:"  # hash per holder: tag -> list key \n message
TOMBSTONE_PREFIX = protocol.KEY_PREFIX + "reaped:"  # a holder declared dead (kept a week)
TOMBSTONE_TTL_S = 7 * 86_400
FLOOR_PREFIX = protocol.KEY_PREFIX + "fetch-floor:"  # per holder: fetches with a lower first tag take nothing

# A holder is dead after missing this many heartbeats in a row.
MISSED_BEATS = 3

_REDIS_ERRORS = (redis.RedisError, OSError)


def new_holder(worker_name: str) -> str:
    """A fresh holder id for a worker process (a new one after it was declared dead)."""
    return f"{worker_name}#{uuid.uuid4().hex[:12]}"


def worker_of(holder: str) -> str:
    return holder.rsplit("#", 1)[0]


def deliveries_key(holder: str) -> str:
    return DELIVERIES_PREFIX + holder


def stale_after(heartbeat_s: float) -> float:
    return MISSED_BEATS * heartbeat_s


@dataclass(frozen=True)
class Delivery:
    """One message a holder took from a queue."""

    tag: str
    queue: str  # the queue's name (infer.<model_id>), whichever priority list it came from
    raw: bytes


@dataclass(frozen=True)
class Reaped:
    """A holder declared dead, and what it held."""

    holder: str
    count: int
    job_ids: list[str]


class Deliveries:
    """The delivery scripts on one broker Redis."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._fetch = client.register_script(lua.source("fetch"))
        self._hand_back = client.register_script(lua.source("hand_back"))
        self._beat = client.register_script(lua.source("beat"))
        self._reap = client.register_script(lua.source("reap"))

    def fetch(self, holder: str, wants: list[tuple[str, int]], first_tag: int,
              total: int | None = None) -> list[Delivery]:
        """Take up to `count` messages from each `(queue, count)` into `holder`'s deliveries (none once it is dead);
        at most `total` in all, the queues read in their order."""
        wants = [(queue, count) for queue, count in wants if count > 0]
        if not wants or total is not None and total <= 0:
            return []
        keys = [deliveries_key(holder)] + [key for queue, _ in wants for key in lists_of(queue)]
        args = ([first_tag, len(PRIORITY_STEPS)] + [count for _, count in wants]
                + [TOMBSTONE_PREFIX + holder, FLOOR_PREFIX + holder] + ([] if total is None else [total]))
        flat = self._fetch(keys=keys, args=args)
        out = []
        for i in range(0, len(flat), 3):
            out.append(Delivery(tag=flat[i].decode(), queue=queue_of(flat[i + 1].decode()), raw=flat[i + 2]))
        return out

    def ack(self, holder: str, tags: list[str]) -> None:
        """Forget deliveries whose results are stored (when the store could not do it itself)."""
        if tags:
            self.redis.hdel(deliveries_key(holder), *tags)

    def hand_back(self, holder: str, tags: list[str], floor: int | None = None) -> int:
        """Give deliveries back to the front of their queues now; the number given back.

        With `floor`, a fetch of `holder` whose first tag is below it takes
        nothing afterwards: for the tags of a fetch whose answer never came.
        """
        if not tags and floor is None:
            return 0
        args = ["" if floor is None else floor, TOMBSTONE_TTL_S, *tags]
        return int(self._hand_back(keys=[deliveries_key(holder), FLOOR_PREFIX + holder], args=args))

    def beat(self, holder: str) -> bool:
        """Record that `holder` lives; False when it was declared dead meanwhile."""
        return bool(self._beat(keys=[BEATS_KEY, HOLDERS_KEY, TOMBSTONE_PREFIX + holder], args=[holder]))

    def reap(self, stale_s: float) -> list[Reaped]:
        """Declare dead every holder silent for `stale_s`; give back what each held."""
        return self._run_reap(stale_s, "")

    def retire(self, holder: str) -> int:
        """A holder leaving for good: give back whatever it still holds, forget it."""
        reaped = self._run_reap(0, holder)
        return reaped[0].count if reaped else 0

    def _run_reap(self, stale_s: float, only: str) -> list[Reaped]:
        flat = self._reap(keys=[BEATS_KEY, HOLDERS_KEY],
                          args=[stale_s, DELIVERIES_PREFIX, TOMBSTONE_PREFIX, TOMBSTONE_TTL_S, only])
        return [Reaped(flat[i].decode(), int(flat[i + 1]), [j.decode() for j in flat[i + 2]])
                for i in range(0, len(flat), 3)]

    def held(self, holder: str) -> dict[str, bytes]:
        """tag -> message, of what `holder` holds now."""
        raw = self.redis.hgetall(deliveries_key(holder))
        return {tag.decode(): value.split(b"\n", 1)[1] for tag, value in raw.items()}


class Reaper:
    """Hands back the deliveries of dead holders, and fixes their jobs' records.

    Workers call `reap_once` after each heartbeat; the webapp runs it on a
    thread of its own (`start`), so a lone worker's death is noticed too.
    """

    def __init__(self, deliveries: Deliveries, results: redis.Redis, registry: redis.Redis, heartbeat_s: float):
        self.deliveries = deliveries
        self.results = results  # job records live beside the results
        self.registry = registry  # the workers' registry (REDIS_URL)
        self.heartbeat_s = heartbeat_s
        self._reset = results.register_script(lua.source("reset_jobs"))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._blind_since: float | None = None  # when this reaper lost Redis
        self._grace_until = 0.0

    def reap_once(self) -> list[Reaped]:
        now = time.monotonic()
        if now < self._grace_until:
            return []
        try:
            # A reaper that could not reach Redis (a restart, a cut link) saw
            # no beats either: the workers get three beats to be heard again
            # before anyone is declared dead.
            if self._blind_since is not None:
                self.deliveries.redis.ping()
                log.info("Redis is back; looking for dead workers again in %.0fs", stale_after(self.heartbeat_s))
                self._blind_since = None
                self._grace_until = now + stale_after(self.heartbeat_s)
                return []
            reaped = self.deliveries.reap(stale_after(self.heartbeat_s))
        except _REDIS_ERRORS as exc:
            if self._blind_since is None:
                log.warning("cannot look for dead workers: %s", exc)
                self._blind_since = now
            return []
        for dead in reaped:
            log.warning("worker %s missed %d heartbeats: %d job(s) it held are back in their queues",
                        dead.holder, MISSED_BEATS, dead.count)
            try:
                if dead.job_ids:
                    self._reset(keys=[protocol.job_key(j) for j in dead.job_ids], args=[dead.holder])
                self._forget_entry(dead.holder)
            except _REDIS_ERRORS as exc:
                log.warning("could not reset the jobs of %s: %s", dead.holder, exc)
        return reaped

    def _forget_entry(self, holder: str) -> None:
        """Drop the dead worker's registry entry, unless a new session of it wrote one."""
        name = worker_of(holder)
        raw = self.registry.hget(protocol.WORKERS_KEY, name)
        if raw is None:
            return
        try:
            current = json.loads(raw).get("holder")
        except ValueError:
            current = None
        if current == holder:
            with self.registry.pipeline(transaction=True) as pipe:
                pipe.hdel(protocol.WORKERS_KEY, name)
                pipe.publish(protocol.REGISTRY_CHANNEL, name)
                pipe.execute()

    def start(self) -> "Reaper":
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.reap_once()
            except Exception:  # noqa: BLE001 - the reaper must survive anything
                log.exception("reaping failed")
