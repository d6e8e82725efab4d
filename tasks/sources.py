"""Where a worker's jobs come from, and where they go back.

- `RedisSource` (Redis broker): the worker fetches inference jobs itself,
  on a fetcher thread that owns the model queues, through the delivery
  scripts of common/deliveries.py — a message is always in its queue or
  held by exactly one live worker, and a dead worker's are back in their
  queues within three heartbeats (see that module for why not kombu).
- `KombuSource` (RabbitMQ, tasks/kombu_source.py): Celery's consumer delivers the jobs (our task
  strategy, tasks/consumer.py); RabbitMQ itself gives a dead worker's
  unacknowledged messages back the moment its connection drops.

Both take only as much as the worker can run soon: `room(model_id)`, the
batcher's bound on the jobs it holds per model (two batches' worth by its
cost model), so an idle worker gets work while another has a backlog.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from common.deliveries import Deliveries, new_holder
from common.envelope import lists_of
from common.protocol import queue_for
from tasks.kombu_source import KombuSource

log = logging.getLogger(__name__)

_REDIS_ERRORS = (redis.RedisError, OSError)
# The fetcher reads every served queue again this often, busy or idle, even
# without a wake-up (a message on one of kombu's priority lists, which the
# watchers skip).
RECHECK_S = 1.0
# How long one watcher's blocking wait lasts before it is renewed.
WATCH_S = 2.0
MAX_BACKOFF_S = 5.0


class RedisSource:
    """Fetches jobs from the Redis broker's model queues on one thread.

    The fetcher takes, per served model, as many messages as the batcher
    has room for, in one atomic script call, from the queues that may hold
    one (`_pending`): a queue leaves that set when a fetch asked it for more
    than it had, and its watcher thread then blocks in `BLMOVE queue queue
    RIGHT RIGHT` — which returns when the queue gets a message and moves
    nothing (the last element back onto itself), at once if one came since —
    and puts it back, waking the fetcher. So a fetch reads the queues that
    got work, not every queue the worker serves: with 50 models per worker,
    reading every queue's lists on each wake-up cost Redis about 1,300
    commands per request. Every RECHECK_S all served queues count as
    pending again (a message on one of kombu's priority lists, which the
    watchers do not see, waits at most that long).
    """

    kind = "redis"

    def __init__(self, settings, worker_name: str, on_delivery, room, worker_room=lambda: None):
        self._url = settings.broker_url
        self.deliveries = Deliveries(redis.Redis.from_url(settings.broker_url, socket_connect_timeout=2,
                                                          socket_timeout=10))
        # Acks go into the result-storing script when results live in the broker's Redis.
        self.acks_with_results = settings.broker_url == settings.result_backend
        self.worker_name = worker_name
        self.holder = new_holder(worker_name)
        self._on_delivery = on_delivery  # (Delivery, holder) -> None, on the fetcher thread
        self._room = room  # model_id -> jobs the batcher will take now
        self._worker_room = worker_room  # () -> jobs it will take now, all models together (None: no bound)
        self._turn = 0  # which served queue a fetch reads first: each in turn
        self._next_tag = 1  # delivery tags are unique per holder; this one counts them
        # (holder, tags) of fetches whose answer never came: the script may have run.
        self._unanswered: list[tuple[str, list[str]]] = []
        self._serving: dict[str, threading.Event] = {}  # model_id -> its watcher's stop event
        # Served queues that may hold a message not taken yet; the others are emptied and watched.
        self._pending: set[str] = set()
        self._cond = threading.Condition()
        self._woken = False
        self._stopping = False
        self._fetch_lock = threading.RLock()  # held while fetching and handing jobs to the batcher
        self._thread = threading.Thread(target=self._run, name="fetcher", daemon=True)

    # -- any thread ----------------------------------------------------

    def start(self) -> "RedisSource":
        self.beat()
        self._thread.start()
        return self

    def serve(self, model_id: str) -> None:
        """Start taking jobs of `model_id`."""
        with self._cond:
            if model_id in self._serving or self._stopping:
                return
            stop = self._serving[model_id] = threading.Event()
            self._pending.add(queue_for(model_id))
            self._woken = True
            self._cond.notify_all()
        threading.Thread(target=self._watch, args=(queue_for(model_id), stop), name=f"watch-{model_id}",
                         daemon=True).start()

    def unserve(self, model_id: str) -> None:
        """Stop taking jobs of `model_id`; no job of it arrives after this returns."""
        with self._fetch_lock, self._cond:
            stop = self._serving.pop(model_id, None)
            if stop is not None:
                stop.set()
            self._pending.discard(queue_for(model_id))
            self._cond.notify_all()

    def serves(self) -> list[str]:
        return list(self._serving)

    def settled(self):
        """Hold fetching: meanwhile every job is in its queue (`waiting`) or in the batcher's hands."""
        return self._fetch_lock

    def waiting(self, model_id: str) -> int | None:
        """Messages waiting in the model's queue (None when the broker cannot say now)."""
        try:
            with self.deliveries.redis.pipeline(transaction=False) as pipe:
                for key in lists_of(queue_for(model_id)):
                    pipe.llen(key)
                return sum(pipe.execute())
        except _REDIS_ERRORS:
            return None

    def wake(self) -> None:
        """The batcher has room again: fetch now rather than at the next recheck.

        Only when a queue may hold messages (room may have held them back):
        an emptied queue has nothing to take until a message comes, and its
        watcher wakes the fetcher then. At one request at a time this spares
        a fetch script per job (each finished job frees room).
        """
        with self._cond:
            if self._pending and not self._woken:
                self._woken = True
                self._cond.notify_all()

    def ack(self, jobs) -> None:
        """Forget the deliveries of finished jobs (when the result store could not do it)."""
        by_holder: dict[str, list[str]] = {}
        for job in jobs:
            by_holder.setdefault(job.holder, []).append(job.tag)
        for holder, tags in by_holder.items():
            self._retrying(lambda h=holder, t=tags: self.deliveries.ack(h, t), "acknowledge jobs")

    def hand_back(self, jobs) -> int:
        """Give jobs back to the front of their queues now (warm shutdown, unload)."""
        by_holder: dict[str, list[str]] = {}
        for job in jobs:
            by_holder.setdefault(job.holder, []).append(job.tag)
        total = 0
        for holder, tags in by_holder.items():
            total += self._retrying(lambda h=holder, t=tags: self.deliveries.hand_back(h, t), "hand jobs back") or 0
        return total

    def beat(self) -> bool:
        """Beat for this holder; False when it had been declared dead (it then starts a new session)."""
        try:
            alive = self.deliveries.beat(self.holder)
        except _REDIS_ERRORS as exc:
            log.warning("delivery heartbeat not written: %s", exc)
            return True
        if alive:
            return True
        with self._fetch_lock:
            old, self.holder = self.holder, new_holder(self.worker_name)
            log.error("this worker (%s) missed its heartbeats and was declared dead; its jobs went to other "
                      "workers. Dropping the jobs it held and going on as %s", old, self.holder)
            try:
                self.deliveries.beat(self.holder)
            except _REDIS_ERRORS:
                pass
        return False

    def stop(self) -> None:
        """Stop fetching (the jobs held are the caller's to hand back)."""
        with self._fetch_lock, self._cond:
            self._stopping = True
            for stop in self._serving.values():
                stop.set()
            self._serving.clear()
            self._cond.notify_all()
        self._thread.join(10)

    def retire(self) -> int:
        """Leave for good: whatever this holder still holds goes back to its queues."""
        return self._retrying(lambda: self.deliveries.retire(self.holder), "retire", give_up_after=10.0) or 0

    # -- the fetcher thread ------------------------------------------------

    def _run(self) -> None:
        backoff = 0.1
        recheck_at = 0.0
        while True:
            with self._cond:
                if self._stopping:
                    return
                self._woken = False
                if time.monotonic() >= recheck_at:
                    self._pending.update(queue_for(m) for m in self._serving)
                    recheck_at = time.monotonic() + RECHECK_S
            try:
                more = self._fetch_once()
            except _REDIS_ERRORS as exc:
                log.warning("cannot fetch jobs from the broker (%s); retrying in %.1fs", exc, backoff)
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping, backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                recheck_at = 0.0  # what happened meanwhile is unknown: every queue again
                continue
            except Exception:  # noqa: BLE001 - the fetcher must survive anything
                log.exception("fetching failed")
                time.sleep(0.1)
                continue
            backoff = 0.1
            if more:
                continue  # a queue gave all it was asked for: it may hold more
            with self._cond:
                # Nothing more to take now: wait for a message on an emptied
                # queue (its watcher), for room, for a change of models, or for
                # the recheck.
                if not self._woken and not self._stopping:
                    self._cond.wait(max(0.0, recheck_at - time.monotonic()))

    def _fetch_once(self) -> bool:
        """Fetch from the pending queues with room; whether one of them gave all it was asked for."""
        with self._fetch_lock:
            self._give_back_unanswered()  # first, even with no room: the model may be gone
            with self._cond:
                models = {queue_for(m): m for m in self._serving}
                self._pending &= models.keys()  # a watcher's last hit may come after its model went
                # Served order, from a turn that moves on each fetch: when the worker's room
                # runs out before every queue's, no model is always the one left waiting.
                queues = list(models)
                self._turn = (self._turn + 1) % max(1, len(queues))
                pending = [q for q in queues[self._turn:] + queues[:self._turn] if q in self._pending]
            total = self._worker_room()
            if total is not None and total <= 0:
                return False  # full across its models: no queue's own room matters
            wants = [(q, self._room(models[q])) for q in pending]
            wants = [(q, n) for q, n in wants if n > 0]
            if not wants:
                return False
            holder, first = self.holder, self._next_tag
            try:
                got = self.deliveries.fetch(holder, wants, first, total)
            except _REDIS_ERRORS:
                # The script may have run, its answer lost (Redis stopped or the link broke
                # after it ran): what it took would sit in this live holder's deliveries,
                # which no reaper empties. The next fetch first gives those tags back.
                self._next_tag = first + sum(n for _, n in wants)
                self._unanswered.append((holder, [str(t) for t in range(first, self._next_tag)]))
                raise
            self._next_tag += len(got)
            taken: dict[str, int] = {}
            for delivery in got:
                taken[delivery.queue] = taken.get(delivery.queue, 0) + 1
                try:
                    self._on_delivery(delivery, holder)
                except Exception:  # noqa: BLE001 - one job must not stop the others
                    log.exception("could not take delivery %s from %s", delivery.tag, delivery.queue)
            # Emptied: a queue the script read that gave fewer than it could take (what
            # it was asked for, or the rest of the total); those after the total ran out were not read.
            emptied, left = set(), float("inf") if total is None else total
            for q, n in wants:
                if left <= 0:
                    break
                if taken.get(q, 0) < min(n, left):
                    emptied.add(q)
                left -= taken.get(q, 0)
            with self._cond:
                # Watched from now on: a message that came since the fetch wakes its watcher at once.
                self._pending -= emptied
                self._cond.notify_all()
            return len(emptied) < len(wants) and (total is None or len(got) < total)

    def _give_back_unanswered(self) -> None:
        """What fetches without an answer took goes back to the front of its queues; if they reach
        Redis later still (over a connection of their own), they take nothing."""
        while self._unanswered:
            holder, tags = self._unanswered[0]
            back = self.deliveries.hand_back(holder, tags, floor=self._next_tag)
            if back:
                log.warning("a fetch whose answer was lost had taken %d job(s); they are back in their queues", back)
            self._unanswered.pop(0)

    def _watch(self, queue: str, stop: threading.Event) -> None:
        """Once a fetch emptied `queue`: when it gets a message, it is pending again and the fetcher wakes."""
        client = redis.Redis.from_url(self._url, socket_connect_timeout=2, socket_timeout=WATCH_S + 5)
        backoff = 0.1
        while not stop.is_set():
            with self._cond:
                self._cond.wait_for(lambda: stop.is_set() or queue not in self._pending)
            if stop.is_set():
                break
            try:
                # Moves the queue's last element back onto itself: nothing
                # changes, but it returns the moment the queue is not empty.
                hit = client.blmove(queue, queue, WATCH_S, "RIGHT", "RIGHT")
            except _REDIS_ERRORS:
                stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            backoff = 0.1
            if hit is not None:
                with self._cond:
                    self._pending.add(queue)
                    self._woken = True
                    self._cond.notify_all()
        client.close()

    def _retrying(self, fn, what: str, give_up_after: float | None = None):
        """Redis calls that must happen: retried until they do (or `give_up_after` s)."""
        deadline = None if give_up_after is None else time.monotonic() + give_up_after
        delay = 0.1
        while True:
            try:
                return fn()
            except _REDIS_ERRORS as exc:
                if deadline is not None and time.monotonic() + delay > deadline:
                    log.error("could not %s: %s", what, exc)
                    return None
                log.warning("could not %s (%s); retrying in %.1fs", what, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)


def make_source(settings, consumer, on_delivery, room, worker_room=lambda: None):
    """The job source for this worker's broker."""
    if settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        return RedisSource(settings, consumer.hostname, on_delivery, room, worker_room)
    return KombuSource(consumer)
