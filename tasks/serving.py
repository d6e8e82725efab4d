"""The worker's serving bootstep: models, batcher, queues, heartbeat.

At start it asks the model manager for PRELOAD_MODELS (and the models of
any `-Q infer.<model_id>` given on the command line); each model's queue is
consumed only once the model is loaded and calibrated on the worker's
device, so a job is never taken by a worker that cannot run it yet.
"""

from __future__ import annotations

import logging
import os
import time

from celery import bootsteps

from common.errors import ModelNotFound, ServiceError
from common.protocol import LOADED, model_for_queue, queue_for
from common.settings import get_settings
from model_store.devices import detect_device
from model_store.registry import ModelRegistry
from model_store.store import ModelStore
from tasks.batcher import Batcher
from tasks.heartbeat import Heartbeat
from tasks.jobs import Job
from tasks.management import ModelManager, rss_bytes
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
        self.manager: ModelManager | None = None
        self.device = None
        self.started_at = time.time()

    def start(self, c):
        if self.registry is None:  # first start; later ones are reconnections
            self.device = detect_device(self.settings.worker_device)
            self.registry = ModelRegistry(ModelStore(self.settings.model_dir), self.device)
            self.reporter = Reporter(self.settings, c)
            self.batcher = Batcher(self.settings, self.reporter).start()
            self.manager = ModelManager(self).start()
            self.heartbeat = Heartbeat(self.settings.redis_url, c.hostname, self.settings.heartbeat_s,
                                       self.state).start()
            # `-Q infer.<model_id>` on the command line asks for that model too;
            # its queue is consumed once the model is ready, like any other.
            named = [model_for_queue(q.name) for q in c.task_consumer.queues]
            wanted = list(self.settings.preload_models) + [m for m in named if m and q_is_model(m, c)]
            for q in list(c.task_consumer.queues):
                if model_for_queue(q.name):
                    c.cancel_task_queue(q.name)
            for model_id in dict.fromkeys(wanted):
                reply = self.manager.request_load(model_id)
                if "error" in reply:
                    raise ModelNotFound(reply["error"])
            log.info("worker %s on %s: loading %s", c.hostname, self.device, ", ".join(wanted) or "no model")
        # Nothing is ever sent to the default queue; consume model queues only.
        if c.task_consumer.consuming_from(c.app.conf.task_default_queue):
            c.cancel_task_queue(c.app.conf.task_default_queue)
        for model_id in self.batcher.models():  # after a reconnection
            if self.manager.state_of(model_id) == LOADED:
                c.add_task_queue(queue_for(model_id))

    def heartbeat_poke(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.poke()

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
        """This worker's registry entry (see tasks.heartbeat).

        `models` lists only the models whose queue this worker consumes;
        `changing` the ones being loaded, unloaded or that failed to load.
        """
        changing = dict(self.manager.states)
        serving = [m for m in self.registry.loaded().values()
                   if self.batcher.serves(m.model_id)
                   and changing.get(m.model_id, {}).get("state", LOADED) == LOADED]
        return {
            "device": self.device,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "models": {
                m.model_id: {"task": m.task, "fingerprint": m.fingerprint, "source": m.source,
                             "loaded_at": m.loaded_at}
                for m in serving
            },
            "changing": changing,
            "memory": {"rss": rss_bytes(), "models": dict(self.manager.memory)},
            "queues": [queue_for(m.model_id) for m in serving],
            "active": self.batcher.active(),
            "max_batch_size": self.settings.max_batch_size,
            "max_batch_tokens": self.settings.max_batch_tokens,
            "batching": self.batcher.budgets(),
        }

    def shutdown(self, c):
        """Finish the batches in flight, send their acks, leave the registry."""
        if self.manager is not None:
            self.manager.stop()
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
