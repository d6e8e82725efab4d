"""One result listener per webapp process.

Each webapp process subscribes once to its own reply channel and names it
as the `reply_to` of every job it publishes. Workers publish each finished
job's result there, and the listener wakes the request waiting for it. No
request polls the result store, and no per-job subscription is made.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid

import orjson
import redis

from common.protocol import REGISTRY_CHANNEL, REPLY_CHANNEL_PREFIX

log = logging.getLogger(__name__)

# After this long without a message a waiter re-reads the result store
# once: covers a publish lost while the listener was reconnecting.
RECHECK_S = 1.0
# A PING goes to Redis after this long without a reply on the subscription (redis-py's health check).
HEALTH_CHECK_S = 10


class Waiter:
    """A request waiting for one job's result."""

    __slots__ = ("job_id", "event", "payload", "coalesce", "waiting")

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.event = threading.Event()
        self.payload: dict | None = None
        self.coalesce: str | None = None  # set when identical requests may join this job
        self.waiting = 1  # requests waiting on it (those that joined included); see JobService.leave

    def deliver(self, payload: dict) -> None:
        self.payload = payload
        self.event.set()


class ResultListener:
    """Subscribes to this process's reply channel and wakes waiters."""

    def __init__(self, redis_url: str):
        self._redis_url = redis_url
        self.channel = f"{REPLY_CHANNEL_PREFIX}{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._waiters: dict[str, Waiter] = {}
        self._lock = threading.Lock()
        self._started_pid: int | None = None
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._on_registry_change = []  # callbacks: the workers' registry changed

    def ensure_started(self, timeout: float = 5.0) -> bool:
        """Start the listener thread in this process; True once subscribed."""
        if self._started_pid != os.getpid():
            with self._lock:
                if self._started_pid != os.getpid():
                    # A fork (gunicorn --preload) copies no threads: start anew.
                    self.channel = (
                        f"{REPLY_CHANNEL_PREFIX}{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
                    )
                    self._waiters = {}
                    self._subscribed.clear()
                    self._started_pid = os.getpid()
                    threading.Thread(target=self._run, name="result-listener", daemon=True).start()
        return self._subscribed.wait(timeout)

    def on_registry_change(self, callback) -> None:
        self._on_registry_change.append(callback)

    def register(self, job_id: str) -> Waiter:
        waiter = Waiter(job_id)
        self._waiters[job_id] = waiter
        return waiter

    def discard(self, job_id: str) -> None:
        self._waiters.pop(job_id, None)

    def stop(self) -> None:
        """End the listener thread (tests do; the webapp's lives as long as its process)."""
        self._stop.set()

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            pubsub = None
            try:
                client = redis.Redis.from_url(self._redis_url, health_check_interval=HEALTH_CHECK_S)
                pubsub = client.pubsub()
                pubsub.subscribe(self.channel, REGISTRY_CHANNEL)
                for kind, channel, data in self._replies(pubsub):
                    if kind == b"subscribe":
                        if channel == self.channel.encode():
                            self._subscribed.set()
                            backoff = 0.1
                        self._registry_changed()  # missed events while (re)connecting
                    elif kind == b"message":
                        if channel == REGISTRY_CHANNEL.encode():
                            self._registry_changed()
                        else:
                            self._dispatch(data)
            except (redis.RedisError, OSError) as exc:
                self._subscribed.clear()
                log.warning("result listener lost Redis (%s); reconnecting in %.1fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001 - closing a broken connection
                        pass

    def _replies(self, pubsub):
        """(kind, channel, data) of each reply on the subscribed connection, until stopped.

        Read straight off the connection (hiredis parses), one blocking read
        per reply: redis-py's `get_message` polls the socket twice before each
        read and costs about 40 µs more per reply (a reply per job). Every
        second of silence the stop flag is checked and, each HEALTH_CHECK_S,
        a PING goes out; a connection that stays silent after it is dropped
        as lost (a cut link sends no reset).
        """
        conn = pubsub.connection
        heard = time.monotonic()
        while not self._stop.is_set():
            try:
                reply = conn.read_response(push_request=True, timeout=1.0, disconnect_on_error=False)
            except redis.TimeoutError:
                if time.monotonic() - heard > 2 * HEALTH_CHECK_S:
                    raise redis.ConnectionError(f"no reply for {2 * HEALTH_CHECK_S:.0f}s, not even to PING") from None
                pubsub.check_health()  # a PING when HEALTH_CHECK_S passed since the last reply
                continue
            heard = time.monotonic()
            if isinstance(reply, list) and len(reply) == 3:  # the PING's reply is [b"pong", data]
                yield reply[0], reply[1], reply[2]

    def _registry_changed(self) -> None:
        for callback in self._on_registry_change:
            callback()

    def _dispatch(self, data: bytes) -> None:
        try:
            payload = orjson.loads(data)
            job_id = payload["task_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("ignoring malformed reply on %s", self.channel)
            return
        waiter = self._waiters.get(job_id)
        if waiter is not None:
            waiter.deliver(payload)


def wait_for(waiter: Waiter, timeout: float, recheck) -> dict | None:
    """Wait up to `timeout` s for the waiter's payload.

    `recheck()` reads the result store directly; it runs once per
    RECHECK_S of silence, so a lost publish costs at most that long.
    """
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        if waiter.event.wait(min(remaining, RECHECK_S)):
            return waiter.payload
        payload = recheck()
        if payload is not None:
            return payload
