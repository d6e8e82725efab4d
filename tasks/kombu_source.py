"""Jobs delivered through Celery's consumer: the job source on RabbitMQ (tasks/sources.py has Redis's).

RabbitMQ itself gives a dead worker's unacknowledged messages back the
moment its connection drops; this source only adds and cancels the model
queues and acks or gives back messages, always on the consumer thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque

from common import logcontext
from common.protocol import queue_for

log = logging.getLogger(__name__)


class KombuSource:
    """Jobs delivered through Celery's consumer (RabbitMQ, or any broker but Redis).

    The consumer thread owns the broker connection: queues are added and
    cancelled, and messages acked or given back, on that thread.
    """

    kind = "kombu"
    acks_with_results = False

    def __init__(self, consumer, step_timeout: float = 30.0):
        self.consumer = consumer
        self._step_timeout = step_timeout
        self._serving: set[str] = set()
        self._pending: deque = deque()  # (job, action) for the consumer thread

    def start(self) -> "KombuSource":
        return self

    def serve(self, model_id: str) -> None:
        self._serving.add(model_id)
        self.consumer.call_soon(lambda: self.consumer.add_task_queue(queue_for(model_id)))

    def unserve(self, model_id: str) -> None:
        self._serving.discard(model_id)
        self._on_consumer(lambda: self.consumer.cancel_task_queue(queue_for(model_id)))

    def serves(self) -> list[str]:
        return list(self._serving)

    def wake(self) -> None:
        pass  # the broker pushes as acks free prefetch slots

    def settled(self):
        # Deliveries run on the consumer thread and reach the batcher in one
        # step; a message the broker pushed and the consumer has not read yet
        # is unacknowledged, and RabbitMQ gives it back when its queue is cancelled.
        return contextlib.nullcontext()

    def waiting(self, model_id: str) -> int | None:
        """Messages waiting in the model's queue, asked on a connection of its own."""
        try:
            with self.consumer.app.connection_for_write() as conn:
                channel = conn.channel()
                try:
                    return int(channel.queue_declare(queue=queue_for(model_id), passive=True).message_count)
                finally:
                    channel.close()
        except Exception:  # noqa: BLE001 - kombu raises many kinds; unknown is an answer
            return None

    def ack(self, jobs) -> None:
        self._each_on_consumer(jobs, lambda message: message.ack())

    def hand_back(self, jobs) -> int:
        self._each_on_consumer(jobs, lambda message: message.reject(requeue=True))
        return len(jobs)

    def beat(self) -> bool:
        return True

    def stop(self) -> None:
        pass

    def retire(self) -> int:
        return 0

    def _each_on_consumer(self, jobs, action) -> None:
        self._pending.extend((job, action) for job in jobs if job.tag is not None)
        if threading.current_thread() is threading.main_thread():
            self.flush()  # the worker's main thread is the consumer thread
        else:
            self.consumer.call_soon(self.flush)

    def flush(self) -> None:
        """Ack or give back what other threads asked for (consumer thread only)."""
        errors = self.consumer.connection_errors
        while self._pending:
            job, action = self._pending.popleft()
            try:
                action(job.tag)
            except errors as exc:
                # The connection that delivered it is gone: the broker has
                # given the message back already.
                log.info("job %s: its delivery ended with the connection (%s)", job.id, exc,
                         extra=logcontext.job_fields(job))
            except Exception:  # noqa: BLE001 - one message must not stop the others
                log.exception("job %s: could not finish its delivery", job.id, extra=logcontext.job_fields(job))

    def _on_consumer(self, fn) -> None:
        """Run `fn` on the consumer thread and wait for it."""
        if threading.current_thread() is threading.main_thread():
            fn()
            return
        done = threading.Event()

        def run():
            try:
                fn()
            finally:
                done.set()

        self.consumer.call_soon(run)
        if not done.wait(self._step_timeout):
            log.warning("the consumer thread did not run a step within %.0fs", self._step_timeout)
