"""Celery configuration: maps the service settings onto Celery's keys.

Both the worker app (`tasks`, via `config_from_object("celeryconfig")`)
and the webapp's publishing client (`celery_conf(settings)`) use this
mapping, so they agree on broker, serialization and result storage.
"""

from functools import lru_cache

from common.connections import with_cert_reqs
from common.settings import Settings, get_settings

AMQP_HEARTBEAT_S = 10


def celery_conf(s: Settings) -> dict:
    """Celery's settings for the service settings `s`."""
    return dict(
        # rediss:// URLs carry their TLS options as query parameters
        # (common/connections.py), which kombu and the result backend read.
        broker_url=with_cert_reqs(s.broker_url),
        result_backend=with_cert_reqs(s.result_backend),
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # Redis: the last resort for a message consumed through kombu
            # and never acknowledged. Inference jobs are not (the workers
            # fetch them themselves and a dead worker's come back within
            # three heartbeats: common/deliveries.py); this covers any other
            # consumer of these queues.
            "visibility_timeout": s.visibility_timeout,
            "unacked_restore_interval": max(1, min(10, s.visibility_timeout // 4)),
            "unacked_restore_throttle": 1,
            # RabbitMQ: a job is accepted only once the broker confirms it
            # holds it (persisted, for the durable queues Celery declares).
            "confirm_publish": True,
        },
        # RabbitMQ: a worker whose host vanished (no TCP reset) is dropped,
        # and its unacknowledged jobs redelivered, after two missed
        # heartbeats: 20 s rather than Celery's default of 4 minutes.
        broker_heartbeat=AMQP_HEARTBEAT_S,
        result_backend_transport_options={"retry_policy": {"timeout": 5.0}},
        # JSON only: a broker message must never be able to run code.
        task_serializer="json",
        result_serializer="json",
        # accept_content also bounds the remote-control mailbox (broadcasts
        # and replies) and the event receivers (Flower): no queue takes pickle.
        accept_content=["json"],
        result_accept_content=["json"],
        event_serializer="json",
        # A job is acknowledged only once its result is stored: a worker
        # killed mid-batch loses nothing, its jobs are redelivered.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        result_expires=s.result_ttl,
        # The model runs in the worker process itself (never prefork): the
        # batching consumer runs forward passes on its own device thread,
        # and control commands share the process that holds the model.
        worker_pool="solo",
        worker_concurrency=1,
        # Bound on unacknowledged jobs per worker; more than one batch's
        # worth, so the next batch fills while the current one runs.
        worker_prefetch_multiplier=s.worker_prefetch,
        worker_send_task_events=True,
        task_create_missing_queues=True,
        # Jobs only ever go to infer.<model_id>; nothing is sent here.
        task_default_queue="infer.default",
        broker_pool_limit=64,
    )


# `app.config_from_object("celeryconfig")` (tasks/__init__.py, or `celery
# --config celeryconfig`) reads Celery's keys as this module's attributes.
# They are not globals written at import: each is looked up here, from the
# settings of this process's environment, when Celery first reads its
# configuration; importing the module for celery_conf reads no environment.

@lru_cache(maxsize=1)
def _from_environment() -> dict:
    return celery_conf(get_settings())


def __getattr__(name: str):
    try:
        return _from_environment()[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *_from_environment()})
