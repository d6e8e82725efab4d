"""Storing each job's result, acknowledging its message, sending its events.

The device thread hands finished jobs to a reporter thread and goes on
with the next batch. The reporter stores the results of all jobs a batch
finished with one script (common/lua/store_results.lua), in the exact
format of Celery's Redis result backend (common/envelope.py: any Celery
client can read them), and publishes each on the reply channel of the
webapp process waiting for it. Only then are the messages acknowledged —
in the same script when the broker is that same Redis — so a worker that
dies before that loses no job.

The first result stored for a job id wins: a worker that was declared dead
(paused past its heartbeats) and comes back cannot overwrite the result of
the worker that ran the job meanwhile; its late result is dropped.

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
from collections import defaultdict, deque

import orjson
import redis

from common import batchstats, envelope, logcontext, lua, protocol
from common.batchstats import BatchStats
from common.deliveries import TOMBSTONE_PREFIX, deliveries_key
from common.errors import ServiceError
from tasks.job import Job

log = logging.getLogger(__name__)

_REDIS_ERRORS = (redis.RedisError, OSError)
# Once the worker is stopping, how long the reporter still retries a
# result write while Redis is down. Until then it retries for as long as
# it takes: the jobs stay held (not acked), so none is lost either way.
STOP_RETRY_S = 10.0
# Events are published at most this long after they happen.
EVENT_FLUSH_S = 0.05

# What start_jobs.lua says of each job, just before its batch runs.
RUN, RUN_ALONE, CANCELLED, FINISHED_ELSEWHERE, KILLS_WORKERS, RERUN, GIVEN_BACK = 1, 2, 0, -1, -2, 3, -3


class Reporter:
    """Writes results, acks messages and sends task events, on its own thread."""

    def __init__(self, settings, consumer, source, task_name: str = protocol.INFER_TASK):
        self.ttl = settings.result_ttl
        self.cache_ttl = settings.cache_ttl
        self.max_deliveries = settings.max_deliveries
        self.redis = redis.Redis.from_url(settings.result_backend, socket_connect_timeout=2, socket_timeout=10)
        self._start_jobs = self.redis.register_script(lua.source("start_jobs"))
        self._store_results = self.redis.register_script(lua.source("store_results"))
        # Whether this Redis has the store script, as far as the reporter knows: set
        # false again on any Redis error (a restarted Redis has lost its scripts).
        self._store_loaded = False
        self.source = source  # acks and hands back the jobs it delivered (tasks/sources.py)
        # Starts are fenced by their holder's tombstone where it lives in this Redis (common/deliveries.py).
        self.fenced = getattr(source, "kind", "") == "redis" and getattr(source, "acks_with_results", False)
        self._task_name = task_name
        self._events: deque = deque()  # (type, timestamp, fields) to publish
        self._finished: queue.SimpleQueue = queue.SimpleQueue()
        self._unacked = 0  # jobs handed over whose messages are not acked yet (they still count as held)
        self._unacked_lock = threading.Lock()
        self._stopping = threading.Event()
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

    # -- called on the fetcher, consumer and device threads ---------------

    def received(self, job: Job) -> None:
        """A job arrived (its task-received event)."""
        if self._send_events:
            headers = job.message.headers if job.message is not None else {}
            # Flower shows these: a summary made here, never the message's own
            # argsrepr/kwargsrepr (any Celery client's send_task puts the inputs there).
            self._events.append(("task-received", job.received_at, dict(
                uuid=job.id, name=self._task_name,
                args="()", kwargs=protocol.arguments_summary(job.model_id, job.inputs),
                root_id=headers.get("root_id"), parent_id=headers.get("parent_id"),
                retries=headers.get("retries", 0), eta=None, expires=headers.get("expires"),
            )))

    def start(self, jobs: list[Job], holder: str, alone: bool) -> list[int]:
        """Mark jobs running just before their batch (device thread); one verdict per job.

        RUN: the job runs (started_at is set); RERUN: the same, alone, and a
        worker died running it before. RUN_ALONE: not started, it must run in
        a batch of its own (`alone`: the batch is that one job).
        CANCELLED, FINISHED_ELSEWHERE, KILLS_WORKERS: it must not run
        (common/lua/start_jobs.lua). GIVEN_BACK: neither, the holder was
        declared dead meanwhile (a start sent before a cut link or a pause
        reaches Redis after the reaper gave its jobs back): another worker runs them.
        """
        now = time.time()
        reply = self._retrying(lambda: self._start_jobs(
            keys=[protocol.job_key(j.id) for j in jobs],
            args=[repr(now), holder, self.max_deliveries, self.ttl, "1" if alone else "0",
                  *[self._fence(j) for j in jobs]]))
        verdicts, created = ([int(v) for v in reply[0]], reply[1]) if reply is not None else \
            ([RUN] * len(jobs), [b""] * len(jobs))
        for job, verdict, created_at in zip(jobs, verdicts, created):
            if verdict in (RUN, RERUN):
                job.started_at = now
                job.enqueued_at = float(created_at) if created_at else job.received_at
                if self._send_events:
                    self._events.append(("task-started", now, {"uuid": job.id}))
        reruns = verdicts.count(RERUN)
        if reruns:  # rare (a worker died running them): a round trip of its own
            self._retrying(lambda: self.redis.hincrby(protocol.batch_stats_key(jobs[0].model_id),
                                                      "redelivered", reruns))
        return verdicts

    def finish(self, model_id: str, jobs: list[Job], batch_size: int = 0, forward_s: float = 0.0,
               passes: int = 0, tokens: int = 0, padded_tokens: int = 0) -> None:
        """Hand over finished jobs: their results are stored, then they are acked.

        `batch_size` and the rest describe the batch that finished them (none
        for jobs that ended without running): `tokens` its items' real
        lengths, `padded_tokens` the same padded to the longest.
        """
        with self._unacked_lock:
            self._unacked += len(jobs)
        self._finished.put((model_id, jobs, batch_size, forward_s, passes, time.time(), tokens, padded_tokens))

    def unacked(self) -> int:
        """Jobs handed over and not yet acked: the worker still holds their messages."""
        return self._unacked

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every result handed over so far is stored (device thread)."""
        done = threading.Event()
        self._finished.put(done)
        return done.wait(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Write what was handed over, publish pending events, stop the thread."""
        self._stopping.set()
        self._finished.put(None)
        self._thread.join(timeout)

    # -- the reporter thread ----------------------------------------------

    def _run(self) -> None:
        # Events go out EVENT_FLUSH_S after the last flush, not after every
        # store: at one request at a time that was a publish per job.
        flush_at = time.monotonic() + EVENT_FLUSH_S
        while True:
            try:
                work = self._finished.get(timeout=max(0.0, flush_at - time.monotonic()))
            except queue.Empty:
                work = ()
            if work is None:
                self._publish_events()
                return
            if isinstance(work, threading.Event):  # drain(): everything before it is stored
                work.set()
                continue
            try:
                if work:
                    self._store(*work)
                if time.monotonic() >= flush_at:
                    self._publish_events()
                    flush_at = time.monotonic() + EVENT_FLUSH_S
            except Exception:  # noqa: BLE001 - the reporter must survive anything
                log.exception("reporting failed")
            finally:
                if work and work[1]:
                    with self._unacked_lock:
                        self._unacked -= len(work[1])
                    self.source.wake()  # their slots are free: WORKER_PREFETCH counts held messages

    def _store(self, model_id: str, jobs: list[Job], batch_size: int, forward_s: float, passes: int,
               now: float, tokens: int = 0, padded_tokens: int = 0) -> None:
        """Store results and batch statistics, ack the messages, queue the events."""
        date_done = envelope.now()
        args = []
        written = []
        for job in jobs:
            if job.cancelled or job.skipped:
                continue  # the cancellation, or another worker's result, is stored already
            meta_json = envelope.dumps(_meta(job, date_done))
            channel, reply = "", b""
            if job.reply_to and job.reply_to.startswith(protocol.REPLY_CHANNEL_PREFIX):
                # The same document plus the job's timings and cache keys, without encoding the result twice.
                extra = {"timings": job.timings(now)}
                if job.error is None and job.cacheable and self.cache_ttl:
                    extra["cache_keys"] = job.cache_keys
                channel, reply = job.reply_to, envelope.with_fields(meta_json, extra)
            status = protocol.SUCCEEDED if job.error is None else protocol.FAILED
            args += [protocol.result_key(job.id), meta_json, protocol.job_key(job.id), status, channel, reply,
                     self._fence(job)]
            written.append(job)
        cached = {}  # cache key -> output, each written once
        if self.cache_ttl:
            for job in written:
                if job.error is None and job.cacheable:
                    for index, key in enumerate(job.cache_keys):
                        if key is not None and index not in job.prefilled:
                            cached.setdefault(key, job.outputs[index])
        # Acks go into the same script when the broker is this Redis; one
        # holder per call (a batch spans two only if the worker's session
        # was renewed meanwhile): the others are acked after.
        folded, later = self._split_acks(jobs)
        holder_key = deliveries_key(folded[0].holder) if folded else ""
        args = [self.ttl, repr(now), len(written)] + args + [self.cache_ttl or 1, len(cached)]
        for key, output in cached.items():  # never an error: only succeeded jobs' outputs
            args += [key, orjson.dumps(output, option=orjson.OPT_SERIALIZE_NUMPY)]
        args += [holder_key, len(folded)] + [job.tag for job in folded]

        stats = self._stats(written, now)
        if batch_size:
            stats[model_id].batch(batch_size, passes, forward_s, tokens, padded_tokens)

        def write():
            # EVALSHA, not the Script called on the pipeline: that asks SCRIPT EXISTS
            # first, a round trip per store. (After a SCRIPT FLUSH, EXEC fails on
            # NOSCRIPT with the statistics counted; the retry counts them again.)
            if not self._store_loaded:
                self._store_results.sha = self.redis.script_load(self._store_results.script)
                self._store_loaded = True
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.evalsha(self._store_results.sha, 0, *args)
                for stats_model, increments in stats.items():
                    increments.write(pipe, stats_model)
                return pipe.execute()[0]

        stored = self._retrying(write) if (written or folded or stats) else []
        if stored is None:  # stopping, and Redis is still down: the jobs stay held, nothing is lost
            log.error("results of %d job(s) not stored (Redis unreachable); their messages stay unacknowledged "
                      "and go to another worker", len(jobs))
            return
        late = 0
        for job, verdict in zip(written, stored):
            if verdict == 1:
                continue
            job.skipped = True
            late += 1
            if verdict == 0:
                log.warning("job %s: a result was stored for it already (by a worker that took it over); "
                            "this late one is dropped", job.id, extra=logcontext.job_fields(job))
            else:
                log.warning("job %s: this worker was declared dead meanwhile and the job given back to its queue; "
                            "its result is dropped (the job's next run stores one)", job.id,
                            extra=logcontext.job_fields(job))
        if late:  # counted for operators (and the fault suite): work done twice
            self._retrying(lambda: self.redis.hincrby(protocol.batch_stats_key(model_id), "late_results", late))
        if later:
            self.source.ack(later)
        if self._send_events:
            for job in jobs:
                if not job.skipped:
                    self._events.append(self._outcome_event(job, now))

    @staticmethod
    def _stats(jobs: list[Job], now: float) -> defaultdict[str, BatchStats]:
        """Per model: the failures, queue waits and inference times of jobs whose results are stored now.

        A result that loses to another worker's (written first) is counted
        all the same: the job did wait and run here.
        """
        stats: defaultdict[str, BatchStats] = defaultdict(BatchStats)
        for job in jobs:
            if job.error is not None:
                stats[job.model_id].failed(getattr(job.error, "type", "internal_error"))
            if job.started_at is not None:
                queued_at = job.enqueued_at or job.received_at
                stats[job.model_id].observe(batchstats.QUEUE_SECONDS, job.started_at - queued_at)
                stats[job.model_id].observe(batchstats.INFERENCE_SECONDS, now - job.started_at)
        return stats

    def _fence(self, job: Job) -> str:
        """The tombstone key that fences the job's start and store (its holder declared dead), or '' for none."""
        return TOMBSTONE_PREFIX + job.holder if self.fenced and job.holder else ""

    def _split_acks(self, jobs: list[Job]) -> tuple[list[Job], list[Job]]:
        """(jobs acked inside the result script, jobs the source acks after it)."""
        ackable = [job for job in jobs if job.tag is not None]
        if not ackable or not self.source.acks_with_results:
            return [], ackable
        holder = ackable[0].holder
        return [j for j in ackable if j.holder == holder], [j for j in ackable if j.holder != holder]

    def _outcome_event(self, job: Job, now: float) -> tuple:
        if job.cancelled:
            return ("task-revoked", now, dict(uuid=job.id, terminated=False, signum=None, expired=False))
        if job.error is not None:
            # The error's class and type only: its message may quote the input
            # (the client reads it from the job's result, Flower does not).
            summary = f"{type(job.error).__name__}({getattr(job.error, 'type', 'error')!r})"
            return ("task-failed", now, dict(uuid=job.id, exception=summary, traceback=""))
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

    def _retrying(self, fn):
        """Run a Redis call until it succeeds; None if the worker stops while Redis is still down."""
        delay = 0.1
        give_up_at = None
        while True:
            try:
                return fn()
            except _REDIS_ERRORS as exc:
                self._store_loaded = False
                if self._stopping.is_set():
                    give_up_at = give_up_at or time.monotonic() + STOP_RETRY_S
                    if time.monotonic() + delay > give_up_at:
                        return None
                log.warning("Redis unreachable (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


def _meta(job: Job, date_done: str) -> dict:
    """The job's Celery result document; a traceback only for what is not a ServiceError (a bug)."""
    if job.error is None:
        return envelope.success(job.id, job.result(), date_done)
    error = job.error
    trace = None if isinstance(error, ServiceError) else "".join(traceback.format_exception(error))
    return envelope.failure(job.id, error, date_done, trace)
