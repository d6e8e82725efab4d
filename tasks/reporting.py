"""Storing each job's result, acknowledging its message, sending its events.

The device thread hands finished jobs to a reporter thread and goes on
with the next batch. The reporter writes the results of all jobs a batch
finished in one Redis round trip, in the exact format of Celery's Redis
result backend (any Celery client can read them), and publishes each on
the reply channel of the webapp process waiting for it. Only then are the
messages acknowledged: a worker that dies before that loses no job.

With the usual setup (broker and results in one Redis) the acks go into
the same MULTI/EXEC as the results: kombu's Redis transport acknowledges a
message by removing it from its `unacked` hash and index, so the reporter
does exactly that, then clears kombu's in-memory record the way its own
ack does. One round trip per batch instead of one per job, off the
consumer thread. Otherwise messages are acked one by one through the
consumer thread, which owns the broker connection.

Task events (received, started, succeeded, failed, revoked) go through the
reporter's own event dispatcher, buffered and published as one
`task-multi` message every EVENT_FLUSH_S: Flower sees every job as its own
task without the consumer thread paying a publish per event.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections import deque
from datetime import datetime, timezone

import orjson
import redis
from kombu.transport import virtual

from common import protocol
from common.errors import ServiceError
from tasks.jobs import Job

log = logging.getLogger(__name__)

_REDIS_ERRORS = (redis.RedisError, OSError)
# How long the reporter keeps retrying a result write while Redis is down
# before giving the jobs back to the queue (reject + requeue).
STORE_RETRY_S = 60.0
# Events are published at most this long after they happen.
EVENT_FLUSH_S = 0.05


class Reporter:
    """Writes results, acks messages and sends task events, on its own thread."""

    def __init__(self, settings, consumer, task_name: str = protocol.INFER_TASK):
        self.ttl = settings.result_ttl
        self.cache_ttl = settings.cache_ttl
        self.redis = redis.Redis.from_url(settings.result_backend, socket_connect_timeout=2, socket_timeout=10)
        self._start_jobs = self.redis.register_script(protocol.START_JOBS_LUA)
        # Acks can join the result writes when the broker is this same Redis.
        self._acks_in_pipeline = settings.broker_url == settings.result_backend and settings.broker_url.startswith(
            ("redis://", "rediss://", "unix://"))
        self._consumer = consumer
        self._task_name = task_name
        self._on_consumer: deque = deque()  # (kind, job) for the consumer thread
        self._events: deque = deque()  # (type, timestamp, fields) to publish
        self._finished: queue.SimpleQueue = queue.SimpleQueue()
        eventer = consumer.event_dispatcher
        self._send_events = bool(eventer is not None and eventer.enabled)
        self._dispatcher = None
        if self._send_events:
            app = consumer.app
            self._dispatcher = app.events.Dispatcher(
                app.connection_for_write(), hostname=consumer.hostname, enabled=True,
                buffer_group=["task"], buffer_limit=1_000_000,
            )
        self._thread = threading.Thread(target=self._run, name="reporter", daemon=True)
        self._thread.start()

    # -- called on the consumer and device threads -------------------------

    def received(self, job: Job) -> None:
        """A job arrived (its task-received event)."""
        if self._send_events:
            headers = job.message.headers if job.message is not None else {}
            self._events.append(("task-received", job.received_at, dict(
                uuid=job.id, name=self._task_name,
                args=headers.get("argsrepr", "()"), kwargs=headers.get("kwargsrepr", "{}"),
                root_id=headers.get("root_id"), parent_id=headers.get("parent_id"),
                retries=headers.get("retries", 0), eta=None, expires=headers.get("expires"),
            )))

    def start(self, jobs: list[Job]) -> list[Job]:
        """Mark jobs running; return those cancelled before they started (device thread)."""
        now = time.time()
        flags = self._retrying(
            lambda: self._start_jobs(keys=[protocol.job_key(j.id) for j in jobs], args=[repr(now)])
        )
        cancelled = []
        for job, may_run in zip(jobs, flags or [1] * len(jobs)):
            if may_run:
                job.started_at = now
                if self._send_events:
                    self._events.append(("task-started", now, {"uuid": job.id}))
            else:
                job.cancelled = True
                cancelled.append(job)
        return cancelled

    def finish(self, model_id: str, jobs: list[Job], batch_size: int = 0, forward_s: float = 0.0,
               passes: int = 0) -> None:
        """Hand over finished jobs: their results are stored, then they are acked."""
        self._finished.put((model_id, jobs, batch_size, forward_s, passes, time.time()))

    def stop(self, timeout: float = 30.0) -> None:
        """Write what was handed over, publish pending events, stop the thread."""
        self._finished.put(None)
        self._thread.join(timeout)

    # -- the reporter thread ----------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                work = self._finished.get(timeout=EVENT_FLUSH_S)
            except queue.Empty:
                work = ()
            if work is None:
                self._publish_events()
                return
            try:
                if work:
                    self._store(*work)
                self._publish_events()
            except Exception:  # noqa: BLE001 - the reporter must survive anything
                log.exception("reporting failed")

    def _store(self, model_id: str, jobs: list[Job], batch_size: int, forward_s: float, passes: int,
               now: float) -> None:
        """Store results and batch statistics, ack the messages, queue the events."""
        date_done = datetime.now(timezone.utc).isoformat()
        writes = []
        for job in jobs:
            if job.cancelled:
                continue  # the webapp stored the cancellation when it made it
            meta_json = orjson.dumps(self._meta(job, date_done))
            reply = None
            if job.reply_to and job.reply_to.startswith(protocol.REPLY_CHANNEL_PREFIX):
                # The same document plus the job's timings and cache keys, without encoding the result twice.
                extra = {"timings": job.timings(now)}
                if job.error is None and job.cacheable and self.cache_ttl:
                    extra["cache_keys"] = job.cache_keys
                reply = meta_json[:-1] + b"," + orjson.dumps(extra)[1:]
            writes.append((job, meta_json, reply))
        cached = {}  # cache key -> output, each written once
        if self.cache_ttl:
            for job in jobs:
                if job.error is None and not job.cancelled and job.cacheable:
                    for index, key in enumerate(job.cache_keys):
                        if key is not None and index not in job.prefilled:
                            cached.setdefault(key, job.outputs[index])
        acks = [job for job in jobs if self._can_ack_here(job)]

        def write():
            with self.redis.pipeline(transaction=bool(acks)) as pipe:
                for job, meta_json, reply in writes:
                    key = protocol.result_key(job.id)
                    pipe.setex(key, self.ttl, meta_json)
                    pipe.publish(key, meta_json)  # Celery's own result subscribers
                    if reply is not None:
                        pipe.publish(job.reply_to, reply)
                    record = protocol.job_key(job.id)
                    status = protocol.SUCCEEDED if job.error is None else protocol.FAILED
                    pipe.hset(record, mapping={"status": status, "finished_at": repr(now)})
                    pipe.expire(record, self.ttl)
                for key, output in cached.items():  # never an error: only succeeded jobs' outputs
                    pipe.setex(key, self.cache_ttl, orjson.dumps(output))
                for job in acks:  # exactly what kombu's Redis QoS.ack removes
                    channel, tag = job.message.channel, job.message.delivery_tag
                    pipe.zrem(channel.unacked_index_key, tag)
                    pipe.hdel(channel.unacked_key, tag)
                if batch_size:
                    stats = protocol.batch_stats_key(model_id)
                    pipe.hincrby(stats, "batches", 1)
                    pipe.hincrby(stats, "items", batch_size)
                    pipe.hincrby(stats, f"size:{batch_size}", 1)
                    pipe.hincrby(stats, "passes", passes)
                    pipe.hincrbyfloat(stats, "forward_seconds", forward_s)
                pipe.execute()
            return True

        stored = self._retrying(write, give_up_after=STORE_RETRY_S) if (writes or batch_size or acks) else True
        acked = set(map(id, acks)) if stored else set()
        for job in jobs:
            if id(job) in acked:
                # kombu's own ack does this after its Redis commands: the
                # message no longer counts against the prefetch limit.
                virtual.QoS.ack(job.message.channel.qos, job.message.delivery_tag)
            elif stored or job.cancelled:
                self._on_consumer.append(("ack", job))
            else:
                self._on_consumer.append(("requeue", job))
            if self._send_events and (stored or job.cancelled):
                self._events.append(self._outcome_event(job, now))
        self._consumer.call_soon(self.flush)

    def _can_ack_here(self, job: Job) -> bool:
        message = job.message
        if not self._acks_in_pipeline or message is None or job.ack is None:
            return False
        channel = getattr(message, "channel", None)
        return (channel is not None and hasattr(channel, "unacked_key") and hasattr(channel, "unacked_index_key")
                and isinstance(getattr(channel, "qos", None), virtual.QoS))

    def _outcome_event(self, job: Job, now: float) -> tuple:
        if job.cancelled:
            return ("task-revoked", now, dict(uuid=job.id, terminated=False, signum=None, expired=False))
        if job.error is not None:
            return ("task-failed", now, dict(uuid=job.id, exception=repr(job.error), traceback=""))
        return ("task-succeeded", now, dict(uuid=job.id, result=f"<{len(job.outputs)} output(s)>",
                                            runtime=round(now - (job.started_at or job.received_at), 6)))

    def _publish_events(self) -> None:
        if not self._events or self._dispatcher is None:
            return
        try:
            while self._events:
                kind, timestamp, fields = self._events.popleft()
                self._dispatcher.send(kind, timestamp=timestamp, **fields)
            self._dispatcher.flush()
        except Exception as exc:  # noqa: BLE001 - events are best effort, results are not
            log.warning("could not publish task events: %s", exc)

    def _meta(self, job: Job, date_done: str) -> dict:
        if job.error is None:
            return {"status": "SUCCESS", "result": job.result(), "traceback": None, "children": [],
                    "date_done": date_done, "task_id": job.id}
        error = job.error
        return {
            "status": "FAILURE",
            "result": {"exc_type": type(error).__name__, "exc_message": [str(getattr(error, "message", error))],
                       "exc_module": type(error).__module__},
            "traceback": None if isinstance(error, ServiceError) else "".join(traceback.format_exception(error)),
            "children": [],
            "date_done": date_done,
            "task_id": job.id,
        }

    def _retrying(self, fn, give_up_after: float = STORE_RETRY_S):
        deadline = time.monotonic() + give_up_after
        delay = 0.1
        while True:
            try:
                return fn()
            except _REDIS_ERRORS as exc:
                if time.monotonic() + delay > deadline:
                    log.error("Redis unreachable for %.0fs (%s); giving jobs back to the queue", give_up_after, exc)
                    return None
                log.warning("Redis unreachable (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- the consumer thread ----------------------------------------------

    def flush(self) -> None:
        """Ack or requeue what could not be acked in the pipeline (consumer thread only)."""
        errors = self._consumer.connection_errors
        while self._on_consumer:
            kind, job = self._on_consumer.popleft()
            try:
                if kind == "requeue":
                    job.reject(log, errors, True)
                elif job.ack is not None:
                    job.ack(log, errors)
            except Exception:  # noqa: BLE001 - one bad ack must not stop the others
                log.exception("could not finish job %s (%s)", job.id, kind)
