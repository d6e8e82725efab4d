"""The worker's serving bootstep: models, batchers, queues, heartbeat.

At start it loads PRELOAD_MODELS on the worker's device, starts one
batcher per model, and only then consumes `infer.<model_id>` for each, so
a job is never taken by a worker that cannot run it yet.
"""

from __future__ import annotations

import logging
import os
import time

from celery import bootsteps

from common.errors import ServiceError
from common.protocol import model_for_queue, queue_for
from common.settings import get_settings
from model_store.devices import detect_device
from model_store.registry import ModelRegistry
from model_store.store import ModelStore
from tasks.batcher import Batcher
from tasks.heartbeat import Heartbeat
from tasks.jobs import Job
from tasks.reporting import Reporter

log = logging.getLogger(__name__)


class ModelServing(bootsteps.StartStopStep):
    """Loads models and runs their batchers inside the worker's consumer."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c, **kwargs):
        super().__init__(c, **kwargs)
        c.atf_serving = self
        self.consumer = c
        self.settings = get_settings()
        self.registry: ModelRegistry | None = None
        self.reporter: Reporter | None = None
        self.heartbeat: Heartbeat | None = None
        self.batcher: Batcher | None = None
        self.device = None
        self.started_at = time.time()

    def start(self, c):
        if self.registry is None:  # first start; later ones are reconnections
            self.device = detect_device(self.settings.worker_device)
            self.registry = ModelRegistry(ModelStore(self.settings.model_dir), self.device)
            self.reporter = Reporter(self.settings, c)
            self.batcher = Batcher(self.settings, self.reporter).start()
            # `-Q infer.<model_id>` on the command line asks for that model too.
            named = [model_for_queue(q.name) for q in c.task_consumer.queues]
            wanted = list(self.settings.preload_models) + [m for m in named if m and q_is_model(m, c)]
            for model_id in dict.fromkeys(wanted):
                self.load(model_id)
            self.heartbeat = Heartbeat(self.settings.redis_url, c.hostname, self.settings.heartbeat_s,
                                       self.state).start()
            log.info("worker %s serves %s on %s", c.hostname, ", ".join(self.batcher.models()) or "no model",
                     self.device)
        # Nothing is ever sent to the default queue; consume model queues only.
        if c.task_consumer.consuming_from(c.app.conf.task_default_queue):
            c.cancel_task_queue(c.app.conf.task_default_queue)
        for model_id in self.batcher.models():
            c.add_task_queue(queue_for(model_id))

    def load(self, model_id: str, task: str | None = None) -> None:
        """Load a model and give it a lane in the batcher (the caller adds its queue)."""
        self.batcher.add_model(self.registry.load(model_id, task))

    def submit(self, job: Job) -> None:
        """Hand a received job to its model's batcher (consumer thread)."""
        if not self.batcher.submit(job):
            # Not ours (yet/anymore): back to the queue for a worker that has it.
            log.warning("job %s is for %s, which is not loaded here; requeued", job.id, job.model_id)
            job.reject(log, self.consumer.connection_errors, True)

    def fail_invalid(self, job: Job, error: ServiceError) -> None:
        """Store the failure of a message that is not a valid job, and ack it."""
        job.fail(error)
        self.reporter.finish(job.model_id, [job])

    def state(self) -> dict:
        """This worker's registry entry (see tasks.heartbeat)."""
        return {
            "device": self.device,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "models": {
                m.model_id: {"task": m.task, "fingerprint": m.fingerprint, "loaded_at": m.loaded_at}
                for m in self.registry.loaded().values()
            },
            "queues": [queue_for(model_id) for model_id in self.batcher.models()],
            "active": self.batcher.active(),
            "max_batch_size": self.settings.max_batch_size,
            "max_batch_tokens": self.settings.max_batch_tokens,
            "batching": self.batcher.budgets(),
        }

    def shutdown(self, c):
        """Finish the batches in flight, send their acks, leave the registry."""
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.batcher is not None:
            self.batcher.stop()
        if self.reporter is not None:
            self.reporter.stop()
            self.reporter.flush()  # we are on the consumer thread: ack now


def q_is_model(model_id: str, c) -> bool:
    """True unless the queue is the app's default queue (`infer.default`)."""
    return queue_for(model_id) != c.app.conf.task_default_queue
