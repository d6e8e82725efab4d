"""Celery configuration: maps the service settings onto Celery's keys.

Both the worker app (`tasks`, via `config_from_object("celeryconfig")`)
and the webapp's publishing client (`celery_conf(settings)`) use this
mapping, so they agree on broker, serialization and result storage.
"""

from common.settings import Settings, get_settings


def celery_conf(s: Settings) -> dict:
    """Celery's settings for the service settings `s`."""
    return dict(
        broker_url=s.broker_url,
        result_backend=s.result_backend,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # An unacknowledged message returns to its queue after this long
            # when its worker died (Redis broker; RabbitMQ redelivers on
            # disconnect).
            "visibility_timeout": s.visibility_timeout,
            # Look for such messages every few seconds (one ZRANGE per
            # worker), not kombu's default of every ~100 s.
            "unacked_restore_interval": max(1, min(10, s.visibility_timeout // 4)),
            "unacked_restore_throttle": 1,
        },
        result_backend_transport_options={"retry_policy": {"timeout": 5.0}},
        # JSON only: a broker message must never be able to run code.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
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


globals().update(celery_conf(get_settings()))
