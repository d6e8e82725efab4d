"""Jobs as the webapp sees them: publish, read, wait, cancel.

A job is one Celery task message (task id = job id) on `infer.<model_id>`,
plus a small record `atf:job:<id>` next to its result that says which model
it is for and whether it is queued, running or cancelled. The result itself
lives in Celery's own result key, so any Celery client can read it.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from datetime import datetime, timezone

import orjson
import redis
from kombu.exceptions import KombuError, OperationalError

from common import envelope, lua, otel, protocol
from common.deliveries import Deliveries, Reaper
from common.errors import (
    BrokerUnavailable,
    JobCancelled,
    JobNotCancellable,
    JobNotFound,
    QueueFull,
    ServiceError,
    error_from_stored,
)
from common.requestid import REQUEST_ID_KEY, message_headers
from common.settings import Settings
from webapp.publisher import CeleryPublisher, RedisPublisher, make_publisher
from webapp.response_cache import COALESCED
from webapp.results import ResultListener, Waiter, wait_for

log = logging.getLogger(__name__)

# How long a queue-depth reading is trusted; bounds the cost of the
# MAX_QUEUE_DEPTH check to a few broker calls per second per process.
QUEUE_DEPTH_CACHE_S = 0.5
# How often a process sends the shortened TTLs of the results its /predict
# delivered: one pipeline per interval, whatever the request rate.
DELIVERED_FLUSH_S = 0.5
_REDIS_ERRORS = (redis.RedisError, OSError)


class JobService:
    """Publishes jobs and reads their state; one per webapp process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        options = dict(socket_connect_timeout=2, socket_timeout=10, health_check_interval=30)
        self.redis = redis.Redis.from_url(settings.redis_url, **options)
        # Job records live beside the results, in the result backend.
        self.results = (
            self.redis
            if settings.result_backend == settings.redis_url
            else redis.Redis.from_url(settings.result_backend, **options)
        )
        self.publisher = make_publisher(settings, self.results)
        self.listener = ResultListener(settings.result_backend)
        # On a Redis broker this process also looks for dead workers and
        # hands their jobs back (common/deliveries.py): a lone worker's death
        # is noticed even when no other worker runs.
        self.reaper = None
        if isinstance(self.publisher, RedisPublisher):
            self.reaper = Reaper(Deliveries(self.publisher.broker), self.results, self.redis, settings.heartbeat_s)
        self._reaper_pid: int | None = None
        self._cancel = self.results.register_script(lua.source("cancel_job"))
        self._depths: dict[str, tuple[float, int]] = {}
        self._depth_lock = threading.Lock()
        # Identical requests in flight from this process: coalescing key -> (job id, waiter).
        self._inflight: dict[str, tuple[str, Waiter]] = {}
        self._inflight_lock = threading.Lock()
        self._delivered: queue.SimpleQueue = queue.SimpleQueue()  # job ids whose keys to shorten
        self._delivered_pid: int | None = None
        self._traced = otel.enabled()  # messages say when they were queued (the worker's queue wait span)

    # -- publishing -------------------------------------------------------

    def submit(self, model_id: str, items, is_list: bool, parameters: dict, wait: bool,
               timeout: float | None = None, use_cache: bool = True, prefilled: dict | None = None,
               coalesce: str | None = None, request_id: str | None = None,
               traceparent: str | None = None, settled=None) -> tuple[str | None, Waiter | None]:
        """Record and publish one job; return its id and, if `wait`, a waiter.

        With `timeout`, the job expires (Celery's `expires`) that many seconds
        from now: a worker that gets to it later drops it unrun. `prefilled`
        holds outputs (by item index) already known from the cache: the job
        carries them and computes only the rest. With `coalesce` (a key of
        the whole request) a waiting request identical to one in flight
        from this process joins that job instead of queueing another;
        `settled()`, asked then when none is in flight, says whether one
        finished since the caller read the cache: its outputs are in level 1
        (callers remember them before they leave()), so nothing is queued
        and (None, None) comes back.
        `request_id` and `traceparent` (checked: common/requestid.py) go on
        the record and in the task message's headers.
        """
        self.ensure_reaper()
        self._check_queue_depth(model_id)
        job_id = str(uuid.uuid4())
        waiter = None
        if wait:
            self.listener.ensure_started()
            if coalesce is not None:
                with self._inflight_lock:  # check and claim in one step: one job per identical request
                    joined = self._inflight.get(coalesce)
                    if joined is not None:
                        joined[1].waiting += 1
                    elif settled is not None and settled():
                        return None, None
                    else:
                        waiter = self.listener.register(job_id)
                        waiter.coalesce = coalesce
                        self._inflight[coalesce] = (job_id, waiter)
                if joined is not None:
                    COALESCED.labels(model_id).inc()
                    return joined
            else:
                waiter = self.listener.register(job_id)
        created_at = time.time()
        record = {
            "model_id": model_id,
            "status": protocol.QUEUED,
            "created_at": repr(created_at),
            "items": len(items),
            "reply_to": self.listener.channel,
            **message_headers(request_id, traceparent),  # the record's fields are named as the headers
        }
        kwargs = {"model_id": model_id, "inputs": list(items), "parameters": parameters, "is_list": is_list}
        if not use_cache:
            kwargs["use_cache"] = False
        if prefilled:
            kwargs["prefilled"] = {str(i): output for i, output in prefilled.items()}
        try:
            expires = None
            if timeout is not None:
                expires = datetime.fromtimestamp(time.time() + timeout, timezone.utc).isoformat()
            headers = message_headers(request_id, traceparent)
            if self._traced:
                headers[otel.ENQUEUED_AT_KEY] = created_at
            self.publisher.publish(job_id, model_id, kwargs, self.listener.channel, record, expires, headers=headers)
        except _REDIS_ERRORS + (KombuError, OperationalError) as exc:
            log.warning("job %s: cannot queue it: %s", job_id, exc, extra={"job_id": job_id})
            error = BrokerUnavailable("cannot queue the job: the broker is unreachable")
            if waiter is not None:
                self.leave(waiter)
                # requests that joined this job get the same answer
                waiter.deliver(envelope.failure(job_id, error, envelope.now()))
            try:
                self.results.delete(protocol.job_key(job_id))
            except _REDIS_ERRORS:
                pass
            raise error from None
        return job_id, waiter

    def ensure_reaper(self) -> None:
        """Start this process's reaper thread (once per process: gunicorn forks)."""
        if self.reaper is not None and self._reaper_pid != os.getpid():
            with self._inflight_lock:
                if self._reaper_pid != os.getpid():
                    self._reaper_pid = os.getpid()
                    self.reaper.start()

    def _check_queue_depth(self, model_id: str) -> None:
        now = time.monotonic()
        cached = self._depths.get(model_id)
        if cached is None or now - cached[0] >= QUEUE_DEPTH_CACHE_S:
            # One thread re-reads; the others go on with the last reading.
            if self._depth_lock.acquire(blocking=cached is None):
                try:
                    cached = self._depths.get(model_id)
                    if cached is None or now - cached[0] >= QUEUE_DEPTH_CACHE_S:
                        cached = (now, self.queue_depth(model_id))
                        self._depths[model_id] = cached
                finally:
                    self._depth_lock.release()
            cached = self._depths.get(model_id, cached)
        depth = cached[1]
        if depth >= self.settings.max_queue_depth:
            raise QueueFull(
                f"{depth} jobs wait for model {model_id!r} (MAX_QUEUE_DEPTH="
                f"{self.settings.max_queue_depth}); retry later",
                retry_after=1,
            )

    def queue_depth(self, model_id: str) -> int:
        """Messages waiting in the model's queue (0 when it does not exist yet)."""
        try:
            return self.publisher.queue_depth(model_id)
        except (KombuError, OperationalError) + _REDIS_ERRORS as exc:
            raise BrokerUnavailable("cannot reach the broker") from exc

    # -- reading ----------------------------------------------------------

    def wait(self, waiter: Waiter, timeout: float) -> dict | None:
        """The job's final result payload, or None if `timeout` runs out; leave() the waiter after."""
        return wait_for(waiter, timeout, lambda: self._read_final(waiter.job_id))

    def leave(self, waiter: Waiter) -> None:
        """A request is done with `waiter`; once its last one leaves, an identical request queues a job again."""
        key = getattr(waiter, "coalesce", None)
        if key is not None:
            with self._inflight_lock:
                # Requests that joined share this waiter and may wait longer
                # (their own options.wait): only the last one to leave may
                # unregister it, or the others would miss the published
                # result and answer only from the store's once-a-second recheck.
                waiter.waiting -= 1
                if waiter.waiting > 0:
                    return
                if self._inflight.get(key, (None,))[0] == waiter.job_id:
                    del self._inflight[key]
        self.listener.discard(waiter.job_id)

    def delivered(self, job_id: str) -> None:
        """/predict answered 200 with this job's result: shorten its keys to DELIVERED_RESULT_TTL, soon."""
        if self.settings.delivered_result_ttl >= self.settings.result_ttl:
            return
        self._delivered.put(job_id)
        if self._delivered_pid != os.getpid():  # one thread per process, started in it: gunicorn forks
            with self._inflight_lock:
                if self._delivered_pid != os.getpid():
                    self._delivered_pid = os.getpid()
                    threading.Thread(target=self._expire_delivered, name="delivered-ttl", daemon=True).start()

    def _expire_delivered(self) -> None:
        """Thread: every DELIVERED_FLUSH_S, one pipeline of EXPIRE … LT (never lengthens) for what was delivered."""
        ttl = self.settings.delivered_result_ttl
        while True:
            job_ids = [self._delivered.get()]
            time.sleep(DELIVERED_FLUSH_S)
            while not self._delivered.empty():
                job_ids.append(self._delivered.get())
            try:
                with self.results.pipeline(transaction=False) as pipe:
                    for job_id in job_ids:
                        pipe.expire(protocol.result_key(job_id), ttl, lt=True)
                        pipe.expire(protocol.job_key(job_id), ttl, lt=True)
                    pipe.execute()
            except Exception as exc:  # noqa: BLE001 - the thread must survive; they keep RESULT_TTL, nothing lost
                log.warning("could not shorten the TTL of %d delivered result(s): %s", len(job_ids), exc)

    def store_completed(self, model_id: str, result, request_id: str | None = None,
                        traceparent: str | None = None) -> str:
        """A job answered wholly from the cache: recorded as succeeded, nothing queued."""
        job_id = str(uuid.uuid4())
        now = time.time()
        meta = envelope.dumps(envelope.success(job_id, result, envelope.now()))
        try:
            with self.results.pipeline(transaction=False) as pipe:
                pipe.hset(protocol.job_key(job_id), mapping={
                    "model_id": model_id, "status": protocol.SUCCEEDED, "created_at": repr(now),
                    "started_at": repr(now), "finished_at": repr(now), "cached": 1,
                    **message_headers(request_id, traceparent)})
                pipe.expire(protocol.job_key(job_id), self.settings.result_ttl)
                pipe.setex(protocol.result_key(job_id), self.settings.result_ttl, meta)
                pipe.execute()
        except _REDIS_ERRORS as exc:
            raise BrokerUnavailable("cannot record the job in Redis") from exc
        return job_id

    def _read_final(self, job_id: str) -> dict | None:
        try:
            raw = self.results.get(protocol.result_key(job_id))
        except _REDIS_ERRORS:
            return None
        if raw is None:
            return None
        meta = orjson.loads(raw)
        return meta if meta.get("status") in envelope.READY_STATES else None

    def status(self, job_id: str) -> dict:
        """GET /jobs/<id>: the job's state, with its result or error when done."""
        self.ensure_reaper()
        try:
            with self.results.pipeline(transaction=False) as pipe:
                pipe.hgetall(protocol.job_key(job_id))
                pipe.get(protocol.result_key(job_id))
                record, raw_meta = pipe.execute()
        except _REDIS_ERRORS as exc:
            raise BrokerUnavailable("cannot read the job from Redis") from exc
        if not record and raw_meta is None:
            raise JobNotFound(f"no job {job_id!r} (unknown, or expired after RESULT_TTL)")
        record = {k.decode(): v.decode() for k, v in record.items()}
        meta = orjson.loads(raw_meta) if raw_meta is not None else None
        body = {
            "job_id": job_id,
            "model_id": record.get("model_id"),
            "status": record.get("status", protocol.QUEUED),
            "created_at": _iso(record.get("created_at")),
            "request_id": record.get(REQUEST_ID_KEY),
        }
        for name in ("started_at", "finished_at"):
            if record.get(name):
                body[name] = _iso(record[name])
        if meta and meta.get("status") in envelope.READY_STATES:
            body["status"], result, error = outcome(meta)
            if error is None:
                body["result"] = result
            else:
                body["error"] = error.to_dict()["error"]
        return body

    # -- cancelling -------------------------------------------------------

    def cancel(self, job_id: str) -> dict:
        """Cancel a job that has not started; 409 once it runs or is done."""
        # Stored as Celery stores a revoked task (common/lua/cancel_job.lua).
        meta = envelope.dumps(envelope.failure(job_id, JobCancelled("the job was cancelled"), envelope.now(),
                                               state=envelope.REVOKED))
        try:
            before = self._cancel(keys=[protocol.job_key(job_id), protocol.result_key(job_id)],
                                  args=[repr(time.time()), meta, self.settings.result_ttl]).decode()
        except _REDIS_ERRORS as exc:
            raise BrokerUnavailable("cannot reach Redis") from exc
        if not before:
            raise JobNotFound(f"no job {job_id!r} (unknown, or expired after RESULT_TTL)")
        if before not in (protocol.QUEUED, protocol.CANCELLED):
            raise JobNotCancellable(f"job {job_id} is {before}; only a queued job can be cancelled")
        return {"job_id": job_id, "status": protocol.CANCELLED}

    # -- health -----------------------------------------------------------

    def check_broker(self) -> str | None:
        """None when the broker answers, else why not."""
        try:
            if isinstance(self.publisher, CeleryPublisher):
                with self.publisher.celery.connection_for_write() as conn:
                    conn.ensure_connection(max_retries=1, timeout=2)
            elif self.settings.broker_url == self.settings.redis_url:
                self.redis.ping()
            else:
                redis.Redis.from_url(self.settings.broker_url, socket_connect_timeout=2).ping()
        except (KombuError, OperationalError) + _REDIS_ERRORS as exc:
            return str(exc) or type(exc).__name__
        return None

    def check_results(self) -> str | None:
        """None when the result store answers, else why not."""
        try:
            self.results.ping()
        except _REDIS_ERRORS as exc:
            return str(exc) or type(exc).__name__
        return None


def outcome(meta: dict) -> tuple[str, object, ServiceError | None]:
    """(status, result, error) of a finished job, from its Celery result meta."""
    state = meta.get("status")
    if state == envelope.SUCCESS:
        return protocol.SUCCEEDED, meta.get("result"), None
    if state == envelope.REVOKED:
        return protocol.CANCELLED, None, JobCancelled("the job was cancelled")
    return protocol.FAILED, None, error_from_meta(meta)


def error_from_meta(meta: dict):
    """The ServiceError a failed or revoked job's meta describes."""
    return error_from_stored(*envelope.error_fields(meta))


def _iso(timestamp: str | None) -> str | None:
    if not timestamp:
        return None
    return datetime.fromtimestamp(float(timestamp), timezone.utc).isoformat()
