"""Storing each job's result, then its Celery events and its ack.

Results of all jobs a batch finished are written in one Redis round trip,
in the exact format of Celery's Redis result backend (any Celery client can
read them), and published on the reply channel of the webapp process that
waits for them. Only then are the messages acknowledged: a worker that dies
before that loses no job. Events and acks go through the consumer thread,
which owns the broker connection.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import deque
from datetime import datetime, timezone

import orjson
import redis

from common import protocol
from common.errors import ServiceError
from tasks.jobs import Job

log = logging.getLogger(__name__)

_REDIS_ERRORS = (redis.RedisError, OSError)
# How long the reporter keeps retrying a result write while Redis is down
# before giving the jobs back to the queue (reject + requeue).
STORE_RETRY_S = 60.0


class Reporter:
    """Writes results, then sends events and acks on the consumer thread."""

    def __init__(self, settings, consumer, task_name: str = protocol.INFER_TASK):
        self.ttl = settings.result_ttl
        self.redis = redis.Redis.from_url(settings.result_backend, socket_connect_timeout=2, socket_timeout=10)
        self._start_jobs = self.redis.register_script(protocol.START_JOBS_LUA)
        self._consumer = consumer
        self._task_name = task_name
        self._pending: deque = deque()

    # -- called on batcher threads ----------------------------------------

    def start(self, jobs: list[Job]) -> list[Job]:
        """Mark jobs running; return those cancelled before they started."""
        now = time.time()
        flags = self._retrying(
            lambda: self._start_jobs(keys=[protocol.job_key(j.id) for j in jobs], args=[repr(now)])
        )
        cancelled = []
        for job, may_run in zip(jobs, flags or [1] * len(jobs)):
            if may_run:
                job.started_at = now
                self._pending.append(("started", job))
            else:
                job.cancelled = True
                cancelled.append(job)
        self._wake()
        return cancelled

    def finish(self, model_id: str, jobs: list[Job], batch_size: int = 0, forward_s: float = 0.0,
               passes: int = 0) -> None:
        """Store the finished jobs' results and the batch's statistics, then ack."""
        now = time.time()
        date_done = datetime.now(timezone.utc).isoformat()
        writes = []
        for job in jobs:
            if job.cancelled:
                continue  # the webapp stored the cancellation when it made it
            meta_json = orjson.dumps(self._meta(job, date_done))
            reply = None
            if job.reply_to and job.reply_to.startswith(protocol.REPLY_CHANNEL_PREFIX):
                # The same document plus the job's timings, without encoding the result twice.
                reply = meta_json[:-1] + b',"timings":' + orjson.dumps(job.timings(now)) + b"}"
            writes.append((job, meta_json, reply))

        def write():
            with self.redis.pipeline(transaction=False) as pipe:
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
                if batch_size:
                    stats = protocol.batch_stats_key(model_id)
                    pipe.hincrby(stats, "batches", 1)
                    pipe.hincrby(stats, "items", batch_size)
                    pipe.hincrby(stats, f"size:{batch_size}", 1)
                    pipe.hincrby(stats, "passes", passes)
                    pipe.hincrbyfloat(stats, "forward_seconds", forward_s)
                pipe.execute()
            return True

        stored = self._retrying(write, give_up_after=STORE_RETRY_S) if (writes or batch_size) else True
        for job in jobs:
            if job.cancelled:
                self._pending.append(("revoked", job))
            elif stored:
                self._pending.append(("failed" if job.error else "succeeded", job))
            else:
                self._pending.append(("requeue", job))
        self._wake()

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

    def _wake(self) -> None:
        if self._pending:
            self._consumer.call_soon(self.flush)

    # -- called on the consumer thread ------------------------------------

    def flush(self) -> None:
        """Send the queued events and acks (consumer thread only)."""
        eventer = self._consumer.event_dispatcher
        send = eventer.send if eventer is not None and eventer.enabled else None
        while self._pending:
            kind, job = self._pending.popleft()
            try:
                if kind == "started":
                    if send:
                        send("task-started", uuid=job.id)
                    continue
                if kind == "requeue":
                    job.reject(log, self._consumer.connection_errors, True)
                    continue
                job.ack(log, self._consumer.connection_errors)
                if not send:
                    continue
                if kind == "succeeded":
                    send("task-succeeded", uuid=job.id, result=f"<{len(job.outputs)} output(s)>",
                         runtime=round(time.time() - (job.started_at or job.received_at), 6))
                elif kind == "failed":
                    send("task-failed", uuid=job.id, exception=repr(job.error), traceback="")
                elif kind == "revoked":
                    send("task-revoked", uuid=job.id, terminated=False, signum=None, expired=False)
            except Exception:  # noqa: BLE001 - one bad ack must not stop the others
                log.exception("could not finish job %s (%s)", job.id, kind)
