"""The batching consumer: Celery's task strategy for `tasks.infer`.

Celery calls a task's strategy on the consumer thread for every message.
The default strategy builds a Request and hands it to the pool, one task
per pool slot. Ours hands the job to the model's batcher instead, which
runs items of many jobs in one forward pass, stores each job's result and
only then acks its message. Every job still gets its own task-received,
-started and -succeeded/-failed events, so Flower shows each one.

Per job, the consumer thread only reads the message and tokenizes its
inputs; results, acks and events are the reporter's (tasks/reporting.py).

Why not the `celery-batches` package: it pins celery < 5.7, flushes on a
periodic timer instead of the moment the model is idle (a lone request
waits for the tick), acknowledges a whole batch even when it failed, and
its jobs do not appear in Flower as tasks of their own.
"""

from __future__ import annotations

import logging

from tasks.jobs import InvalidJob, Job, invalid_job_error, job_from_message

log = logging.getLogger(__name__)


def batching_strategy(task, app, consumer, **kwargs):
    """Build the per-message handler Celery calls for `tasks.infer`."""
    serving = consumer.atf_serving

    def task_message_handler(message, body, ack, reject, callbacks, **kw):
        try:
            job = job_from_message(message, ack=ack, reject=reject)
        except InvalidJob as exc:
            log.error("rejecting an invalid job message: %s", exc)
            if exc.job_id:
                serving.fail_invalid(Job(id=exc.job_id, model_id="", inputs=[None], params={}, is_list=False,
                                         message=message, ack=ack, reject=reject), invalid_job_error(exc))
            else:
                ack(log, consumer.connection_errors)
            return
        serving.reporter.received(job)
        serving.submit(job)

    return task_message_handler
