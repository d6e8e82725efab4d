"""The worker's serving bootstep: models, batcher, job source, heartbeat.

At start it asks the model manager for PRELOAD_MODELS (and the models of
any `-Q infer.<model_id>` given on the command line); each model's queue is
consumed only once the model is loaded and calibrated on the worker's
device, so a job is never taken by a worker that cannot run it yet.

Jobs come from the job source (tasks/sources.py): on a Redis broker the
worker's own fetcher, on RabbitMQ Celery's consumer. A warm shutdown
(SIGTERM) finishes the batch in flight and the jobs already started, and
gives every other job back to the front of its queue at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import orjson
import redis
from celery import bootsteps, signals

from common import envelope, failpoints, logcontext, otel, protocol
from common.assignment import Assigner
from common.deliveries import Reaper
from common.errors import ModelNotFound
from common.protocol import LOADED, model_for_queue, queue_for
from common.requestid import REQUEST_ID_KEY, printable_id, valid_request_id
from common.settings import get_settings
from model_store.devices import detect_device
from model_store.loaded_models import LoadedModels
from model_store.store import ModelStore
from tasks.batcher import Batcher
from tasks.heartbeat import Heartbeat
from tasks.job import InvalidJob, Job, invalid_job_error, job_from_envelope
from tasks.kombu_source import KombuSource
from tasks.model_manager import ModelManager, gpu_memory, rss_bytes
from tasks.reporting import Reporter
from tasks.sources import RedisSource, make_source

# The worker compares what it serves with its placement every this many heartbeats.
RECONCILE_EVERY = 3
# The most of a dead-lettered message kept (its start: enough to see what it was).
DEAD_LETTER_BYTES = 65_536

log = logging.getLogger(__name__)


def _batch_spans(worker: str):
    """The worker's span recorder when tracing is configured (common/otel.py), else None."""
    tracer = otel.setup("atf-worker")
    if tracer is None:
        return None
    from tasks.job_spans import BatchSpans

    return BatchSpans(tracer, worker)


class ModelServing(bootsteps.StartStopStep):
    """Loads models and runs their batchers inside the worker's consumer."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c, **kwargs):
        super().__init__(c, **kwargs)
        c.atf_serving = self
        self.consumer = c
        self.settings = get_settings()
        self.models: LoadedModels | None = None
        self.source: RedisSource | KombuSource | None = None
        self.reporter: Reporter | None = None
        self.heartbeat: Heartbeat | None = None
        self.batcher: Batcher | None = None
        self.manager: ModelManager | None = None
        self.reaper: Reaper | None = None
        self.assigner: Assigner | None = None
        self.device = None
        self.started_at = time.time()
        self._ticks = 0

    def start(self, c):
        if self.models is None:  # first start; later ones are reconnections
            settings = self.settings
            if failpoints.active:
                log.warning("ATF_FAILPOINTS is set (%s): this worker provokes faults on purpose",
                            failpoints.describe())
            self.device = detect_device(settings.worker_device)
            self.models = LoadedModels(ModelStore(settings.model_dir), self.device)
            self.source = make_source(settings, c, self.take_delivery, lambda model_id: self.batcher.room(model_id),
                                      lambda: self.batcher.worker_room())
            self.reporter = Reporter(settings, c, self.source)
            self.batcher = Batcher(settings, self.reporter, holder=self.holder, on_room=self.source.wake,
                                   spans=_batch_spans(c.hostname)).start()
            self.manager = ModelManager(self).start()
            if isinstance(self.source, RedisSource):
                self.reaper = Reaper(self.source.deliveries, self.reporter.redis,
                                     redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2,
                                                          socket_timeout=5), settings.heartbeat_s)
            self.source.start()
            self.heartbeat = Heartbeat(settings.redis_url, c.hostname, settings.heartbeat_s, self.state,
                                       on_tick=self.tick).start()
            self.assigner = Assigner(self.manager.placement.redis, settings.heartbeat_s, size_of=self.model_bytes)
            signals.worker_shutting_down.connect(self._on_shutting_down, weak=False)
            # `-Q infer.<model_id>` on the command line asks for that model too;
            # its queue is consumed once the model is ready, like any other.
            named = [model_for_queue(q.name) for q in c.task_consumer.queues]
            wanted = list(settings.preload_models) + [m for m in named if m and not is_default_queue(m, c)]
            self.manager.preloaded = frozenset(wanted)  # never evicted by an on-demand load
            for q in list(c.task_consumer.queues):
                if model_for_queue(q.name):
                    c.cancel_task_queue(q.name)
            for model_id in dict.fromkeys(wanted):
                reply = self.manager.request_load(model_id)
                if "error" in reply:
                    raise ModelNotFound(reply["error"])
            # A worker restarting under its name serves again what it served (its placement);
            # one joining takes its share of the models placed by replicas (the assigner's round, now).
            self.assign(force=True)
            try:
                placed = self.manager.placement.of(c.hostname) or {}
            except (redis.RedisError, OSError) as exc:
                log.warning("cannot read this worker's placement: %s", exc)
                placed = {}
            for model_id, task in placed.items():
                if model_id not in wanted:
                    wanted.append(model_id)
                    reply = self.manager.request_load(model_id, task)
                    if "error" in reply:
                        log.warning("placement names %s, which cannot load: %s", model_id, reply["error"])
            log.info("worker %s on %s: loading %s", c.hostname, self.device, ", ".join(wanted) or "no model")
        elif isinstance(self.source, KombuSource):
            # The broker connection was lost: RabbitMQ gave back every message
            # this worker had not acknowledged, so the jobs not started go.
            # Celery consumes the model queues again by itself (they stay
            # selected in app.amqp.queues) once its event loop runs: adding
            # them here would start consuming before its message callback is set.
            reconnected_at = time.time()
            self.batcher.drop_unstarted(lambda job: job.received_at < reconnected_at)
        # Nothing is ever sent to the default queue; consume model queues only.
        if c.task_consumer.consuming_from(c.app.conf.task_default_queue):
            c.cancel_task_queue(c.app.conf.task_default_queue)

    def holder(self) -> str:
        """Who starts jobs here: the delivery holder (Redis), else the worker's name."""
        return getattr(self.source, "holder", self.consumer.hostname)

    def model_bytes(self, model_id: str) -> int:
        """The size of the files serving `model_id` (what the assigner checks against free device memory)."""
        return self.models.store.describe(self.manager.source_of(model_id)).size_bytes

    def heartbeat_poke(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.poke()

    def tick(self) -> None:
        """After each heartbeat (heartbeat thread): delivery beat, dead workers, model placements."""
        if not self.source.beat():
            # Declared dead (paused past three heartbeats): what this worker
            # held went to others. Keep what was started (first result wins).
            current = self.source.holder
            self.batcher.drop_unstarted(lambda job: job.holder is not None and job.holder != current)
        if self.reaper is not None:
            self.reaper.reap_once()
        mine = self.assign()
        self._ticks += 1
        if mine or self._ticks % RECONCILE_EVERY == 0:
            self.manager.reconcile()

    def assign(self, force: bool = False) -> bool:
        """An assignment round of the model placements, unless another process runs one (common/assignment.py).

        True when the round changed this worker's own placement: it converges now, not in a few beats.
        """
        try:
            changes = self.assigner.run_once(force) or []
        except (redis.RedisError, OSError) as exc:
            log.warning("cannot assign the model placements: %s", exc)
            return False
        return any(change.worker == self.consumer.hostname for change in changes)

    # -- jobs arriving ----------------------------------------------------

    def take_delivery(self, delivery, holder: str) -> None:
        """A message the fetcher took from a queue (fetcher thread, Redis broker)."""
        try:
            message = envelope.read(delivery.raw)
        except envelope.BadEnvelope as exc:
            log.error("dead-lettering delivery %s from %s: %s", delivery.tag, delivery.queue, exc)
            self.dead_letter(delivery.queue, None, str(exc), delivery.raw)
            self.source.deliveries.ack(holder, [delivery.tag])
            return
        self.take(message, delivery.queue, tag=delivery.tag, holder=holder)

    def take_message(self, message) -> None:
        """A message kombu delivered (consumer thread, RabbitMQ)."""
        queue = (message.delivery_info or {}).get("routing_key") or ""
        self.take(envelope.Envelope.from_kombu(message), queue, tag=message)

    def take(self, message: envelope.Envelope, queue: str, tag, holder: str | None = None) -> None:
        """Read a message as a job and hand it to its model's batcher; refuse it if it is none.

        Every line logged meanwhile, and the traceback of anything that
        escapes (Celery's "Unrecoverable error"), names the job.
        """
        with logcontext.bound(job_id=printable_id(message.job_id), model_id=model_for_queue(queue) or None,
                              request_id=valid_request_id(message.headers.get(REQUEST_ID_KEY))):
            self._take(message, queue, tag, holder)

    def _take(self, message: envelope.Envelope, queue: str, tag, holder: str | None) -> None:
        try:
            job = job_from_envelope(message, source=self.source, tag=tag, holder=holder)
        except InvalidJob as exc:
            log.error("dead-lettering a message from %s (job %s): %s", queue or "?", exc.job_id or "without id", exc)
            self.dead_letter(queue, exc.job_id, str(exc), message.raw or message.body)
            # Counted as a failure of the model whose queue it came on.
            failed = Job(id=exc.job_id or "", model_id=model_for_queue(queue) or "", inputs=[None], params={},
                         is_list=False, source=self.source, tag=tag, holder=holder)
            if exc.job_id:
                failed.fail(invalid_job_error(exc))  # stored as failed: whoever waits learns why
            else:
                failed.skipped = True  # nothing to store: only the ack
            self.reporter.finish("", [failed])
            return
        self.reporter.received(job)
        if self.batcher.submit(job):
            return
        expected = model_for_queue(queue)
        if expected and expected != job.model_id:
            log.error("job %s names model %s but came on queue %s; failed", job.id, job.model_id, queue,
                      extra=logcontext.job_fields(job))
            job.fail(invalid_job_error(InvalidJob(job.id, f"the job names model {job.model_id!r} but was sent to "
                                                          f"queue {queue!r}")))
            self.reporter.finish("", [job])
            return
        # Its model is being unloaded here: back to the queue for a worker that has it.
        log.info("job %s is for %s, which this worker no longer serves; handed back", job.id, job.model_id,
                 extra=logcontext.job_fields(job))
        self.source.hand_back([job])

    def dead_letter(self, queue: str, job_id: str | None, reason: str, raw: bytes) -> None:
        """Keep a message no worker can run where an operator can look at it (atf:dead-letters)."""
        record = orjson.dumps({"at": time.time(), "queue": queue, "job_id": job_id, "reason": reason,
                               "worker": self.consumer.hostname,
                               "message": raw[:DEAD_LETTER_BYTES].decode("utf-8", "replace")})
        try:
            with self.reporter.redis.pipeline(transaction=True) as pipe:
                pipe.lpush(protocol.DEAD_LETTERS_KEY, record)
                pipe.ltrim(protocol.DEAD_LETTERS_KEY, 0, protocol.DEAD_LETTERS_KEPT - 1)
                pipe.execute()
        except (redis.RedisError, OSError) as exc:
            log.warning("could not keep the dead letter: %s", exc)

    def state(self) -> dict:
        """This worker's registry entry (see tasks.heartbeat).

        `models` lists only the models whose queue this worker consumes;
        `changing` the ones being loaded, unloaded or that failed to load.
        """
        changing = dict(self.manager.states)
        serving = [m for m in self.models.loaded().values()
                   if self.batcher.serves(m.model_id)
                   and changing.get(m.model_id, {}).get("state", LOADED) == LOADED]
        return {
            "device": self.device,
            "holder": self.holder(),
            "pid": os.getpid(),
            "started_at": self.started_at,
            "models": {
                m.model_id: {"task": m.task, "fingerprint": m.fingerprint, "source": m.source,
                             "loaded_at": m.loaded_at, "load_seconds": m.load_seconds}
                for m in serving
            },
            "changing": changing,
            "version": self.manager.version,  # see ModelManager.version
            "memory": {"rss": rss_bytes(), "gpu": gpu_memory(self.device), "models": dict(self.manager.memory)},
            "queues": [queue_for(m.model_id) for m in serving],
            "active": self.batcher.active(),
            "in_hand": {m.model_id: self.batcher.in_hand(m.model_id) for m in serving},
            "max_models": self.settings.max_models_per_worker,  # the placement assigner's room per worker
            "max_batch_size": self.settings.max_batch_size,
            "max_batch_tokens": self.settings.max_batch_tokens,
            "batching": self.batcher.budgets(),
        }

    def _on_shutting_down(self, **_) -> None:
        """SIGTERM, SIGINT or SIGQUIT just arrived (signal handler): give back the jobs not started now.

        Celery stops this step only once its event loop notices, a second or
        more later on a busy machine, and a cold shutdown never gets there.
        """
        if isinstance(self.source, RedisSource) and self.batcher is not None:
            threading.Thread(target=self._give_back_unstarted, name="hand-back", daemon=True).start()

    def _give_back_unstarted(self) -> None:
        self.source.stop()  # take nothing more
        unstarted = self.batcher.stop()
        if unstarted:
            handed = self.source.hand_back(unstarted)
            log.info("warm shutdown: %d job(s) not started are back at the front of their queues", handed)

    def shutdown(self, c):
        """Warm shutdown: finish what was started, give the rest back at once, leave the registry."""
        signals.worker_shutting_down.disconnect(self._on_shutting_down)
        if self.manager is not None:
            self.manager.stop()
        if self.source is not None and self.batcher is None:
            self.source.stop()
        if self.batcher is not None:
            self._give_back_unstarted()
            left = self.batcher.join()  # the batch in flight, and the jobs it started, finish
            if left:
                self.source.hand_back(left)
        if self.reporter is not None:
            self.reporter.stop()  # results of the finished jobs stored, their messages acked
        if isinstance(self.source, KombuSource):
            self.source.flush()  # we are on the consumer thread: the acks the reporter queued, now
        if self.source is not None:
            left = self.source.retire()
            if left:
                log.info("warm shutdown: %d more job(s) went back to their queues", left)
        if self.heartbeat is not None:
            self.heartbeat.stop()


def is_default_queue(model_id: str, c) -> bool:
    """True when `model_id`'s queue is the app's default queue (`infer.default`), which names no model."""
    return queue_for(model_id) == c.app.conf.task_default_queue
