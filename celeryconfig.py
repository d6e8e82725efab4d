"""Celery configuration: maps the service settings onto Celery's keys.

Both the worker app (`tasks`) and the webapp's publishing client load this
module, so they agree on broker, serialization and result storage.
"""

from common.settings import get_settings

_s = get_settings()

broker_url = _s.broker_url
result_backend = _s.result_backend
broker_connection_retry_on_startup = True
broker_transport_options = {
    # An unacknowledged message returns to its queue after this long when
    # its worker died (Redis broker; RabbitMQ redelivers on disconnect).
    "visibility_timeout": _s.visibility_timeout,
    # Look for such messages every few seconds (one ZRANGE per worker), not
    # kombu's default of every ~100 s, so redelivery follows the timeout.
    "unacked_restore_interval": max(1, min(10, _s.visibility_timeout // 4)),
    "unacked_restore_throttle": 1,
}
result_backend_transport_options = {"retry_policy": {"timeout": 5.0}}

# JSON only: a broker message must never be able to run code.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# A job is acknowledged only once its result is stored: a worker killed
# mid-batch loses nothing, its jobs are redelivered.
task_acks_late = True
task_reject_on_worker_lost = True
result_expires = _s.result_ttl

# The model runs in the worker process itself (never prefork): the batching
# consumer runs jobs on its own thread per model, control commands share the
# process that holds the model.
worker_pool = "solo"
worker_concurrency = 1
# Bound on unacknowledged jobs per worker; the batcher needs more than one
# batch's worth in hand so the next batch fills while the current one runs.
worker_prefetch_multiplier = _s.worker_prefetch
worker_send_task_events = True
task_create_missing_queues = True
# Jobs only ever go to infer.<model_id>; nothing is sent to a default queue.
task_default_queue = "infer.default"

broker_pool_limit = 64
