"""The batching consumer: Celery's task strategy for `tasks.infer`.

Celery calls a task's strategy on the consumer thread for every message.
The default strategy builds a Request and hands it to the pool, one task
per pool slot. Ours hands the job to the model's batcher instead, which
runs items of many jobs in one forward pass, stores each job's result and
only then acks its message. Every job still gets its own task-received,
-started and -succeeded/-failed events, so Flower shows each one.

Per job, the consumer thread only reads the message and tokenizes its
inputs; results, acks and events are the reporter's (tasks/reporting.py).

This is how jobs arrive on RabbitMQ. On a Redis broker the worker fetches
them itself (tasks/sources.py) and Celery's consumer carries only control
commands; both paths meet in ModelServing.take().

Why not the `celery-batches` package: it pins celery < 5.7, flushes on a
periodic timer instead of the moment the model is idle (a lone request
waits for the tick), acknowledges a whole batch even when it failed, and
its jobs do not appear in Flower as tasks of their own.
"""

from __future__ import annotations


def batching_strategy(task, app, consumer, **kwargs):
    """Build the per-message handler Celery calls for `tasks.infer`."""
    serving = consumer.atf_serving

    def task_message_handler(message, body, ack, reject, callbacks, **kw):
        serving.take_message(message)

    return task_message_handler
