"""Putting jobs on the broker: a Celery task message per job.

With a Redis broker the message is written the way kombu's Redis transport
writes it (the same JSON envelope, common/envelope.py, LPUSHed onto the queue's list), in the
same round trip as the job's record. Celery's `send_task` costs about a
millisecond of CPU per call in routing, signals and producer pooling that
this fixed, single-queue case does not need; the worker, Flower and any
Celery client see an ordinary task message. With another broker (RabbitMQ)
jobs go through `send_task`.
"""

from __future__ import annotations

import os
import socket
import threading

import redis
from celery import Celery
from kombu.exceptions import ChannelError

from common import envelope, protocol
from common.settings import Settings


def make_celery_client(settings: Settings) -> Celery:
    """A Celery app that only publishes: it knows task names, not task code."""
    from celeryconfig import celery_conf

    app = Celery("webapp", set_as_current=False)
    app.conf.update(celery_conf(settings))
    return app


def _record_commands(pipe, job_id: str, record: dict, ttl: int) -> None:
    key = protocol.job_key(job_id)
    pipe.hset(key, mapping=record)
    pipe.expire(key, ttl)
    pipe.sadd(protocol.MODELS_KEY, record["model_id"])  # /metrics reports its queue from now on


class RedisPublisher:
    """Writes task messages straight onto a Redis broker's lists."""

    def __init__(self, settings: Settings, results: redis.Redis):
        self._ttl = settings.result_ttl
        self._results = results
        same = settings.broker_url == settings.result_backend
        self.broker = results if same else redis.Redis.from_url(
            settings.broker_url, socket_connect_timeout=2, socket_timeout=10)
        self._origin = f"gen{os.getpid()}@{socket.gethostname()}"

    def publish(self, job_id: str, model_id: str, kwargs: dict, reply_to: str, record: dict,
                expires: str | None = None, headers: dict | None = None) -> None:
        """Record the job and queue its message (one round trip when they share a Redis).

        `headers` go into the task message's headers (the request id and traceparent).
        """
        queue = protocol.queue_for(model_id)
        message = envelope.write(job_id, queue, kwargs, reply_to, self._origin, expires,
                                 kwargsrepr=protocol.arguments_summary(model_id, kwargs.get("inputs")),
                                 extra_headers=headers)
        with self._results.pipeline(transaction=False) as pipe:
            _record_commands(pipe, job_id, record, self._ttl)
            if self.broker is self._results:
                pipe.lpush(queue, message)
            pipe.execute()
        if self.broker is not self._results:
            self.broker.lpush(queue, message)

    def queue_depth(self, model_id: str) -> int:
        return self.queue_depths([model_id])[model_id]

    def queue_depths(self, model_ids: list[str]) -> dict[str, int]:
        """Messages waiting per model, in one round trip (kombu's priority lists included)."""
        with self.broker.pipeline(transaction=False) as pipe:
            for model_id in model_ids:
                for key in envelope.lists_of(protocol.queue_for(model_id)):
                    pipe.llen(key)
            lengths = pipe.execute()
        per_model = len(envelope.PRIORITY_STEPS)
        return {model_id: int(sum(lengths[i * per_model:(i + 1) * per_model]))
                for i, model_id in enumerate(model_ids)}


class CeleryPublisher:
    """Publishes through Celery's `send_task` (any broker kombu supports)."""

    def __init__(self, settings: Settings, results: redis.Redis):
        self._ttl = settings.result_ttl
        self._results = results
        self.celery = make_celery_client(settings)
        self._depth_lock = threading.Lock()
        self._depth_conn = None

    def publish(self, job_id: str, model_id: str, kwargs: dict, reply_to: str, record: dict,
                expires: str | None = None, headers: dict | None = None) -> None:
        with self._results.pipeline(transaction=False) as pipe:
            _record_commands(pipe, job_id, record, self._ttl)
            pipe.execute()
        self.celery.send_task(
            protocol.INFER_TASK, kwargs=kwargs, task_id=job_id, queue=protocol.queue_for(model_id),
            reply_to=reply_to, expires=expires, headers=headers or None,
            # Never the inputs: Celery would put repr(kwargs) in the message and Flower would show it.
            argsrepr="()", kwargsrepr=protocol.arguments_summary(model_id, kwargs.get("inputs")),
            # Results are always stored by our workers; this only stops
            # Celery from subscribing per task in this process.
            ignore_result=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
        )

    def queue_depth(self, model_id: str) -> int:
        """Messages waiting in the model's queue (0 when it does not exist yet)."""
        with self._depth_lock:
            if self._depth_conn is None:
                self._depth_conn = self.celery.connection_for_write()
            channel = self._depth_conn.channel()
            try:
                return int(channel.queue_declare(queue=protocol.queue_for(model_id), passive=True).message_count)
            except ChannelError:
                return 0
            finally:
                try:
                    channel.close()
                except Exception:  # noqa: BLE001 - a closed channel is fine
                    pass

    def queue_depths(self, model_ids: list[str]) -> dict[str, int]:
        """Messages waiting per model (a passive declare each)."""
        return {model_id: self.queue_depth(model_id) for model_id in model_ids}


def make_publisher(settings: Settings, results: redis.Redis):
    if settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        return RedisPublisher(settings, results)
    return CeleryPublisher(settings, results)
