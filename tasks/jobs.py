"""A job as the worker holds it: one Celery task message with 1..N items."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from common.cache import cache_key
from common.errors import ServiceError, ValidationFailed


class InvalidJob(Exception):
    """Raised when a task message cannot be read as an inference job."""

    def __init__(self, job_id: str | None, reason: str):
        super().__init__(reason)
        self.job_id = job_id


@dataclass(eq=False)
class Job:
    """One job in the worker, from receipt to its stored result and ack."""

    id: str
    model_id: str
    inputs: list
    params: dict
    is_list: bool
    reply_to: str | None = None
    message: object = None
    ack: object = None
    reject: object = None
    received_at: float = field(default_factory=time.time)
    expires_at: float | None = None  # Celery's `expires`: drop the job unrun after this
    started_at: float | None = None
    outputs: list = field(default_factory=list)
    remaining: int = 0
    error: ServiceError | None = None
    cancelled: bool = False
    largest_batch: int = 0
    forward_s: float = 0.0
    use_cache: bool = True  # write the outputs to the response cache
    prefilled: dict = field(default_factory=dict)  # index -> output the webapp had cached
    cache_keys: list = field(default_factory=list)  # per input, once the worker knows the model

    def __post_init__(self):
        self.params_key = json.dumps(self.params, sort_keys=True)
        self.outputs = [None] * len(self.inputs)
        for index, output in self.prefilled.items():
            self.outputs[index] = output
        self.remaining = len(self.inputs) - len(self.prefilled)
        self.cache_keys = [None] * len(self.inputs)

    @property
    def cacheable(self) -> bool:
        """Sampled generations differ run to run: never cached, never shared."""
        return self.use_cache and not self.params.get("do_sample")

    @property
    def done(self) -> bool:
        return self.cancelled or self.error is not None or self.remaining == 0

    def set_cache_keys(self, fingerprint: str, task: str) -> None:
        """Key every input under the weights `fingerprint` (left unkeyed when not cacheable)."""
        if self.cacheable:
            self.cache_keys = [cache_key(fingerprint, task, item, self.params) for item in self.inputs]

    def fail(self, error: ServiceError) -> None:
        if self.error is None:
            self.error = error

    def result(self):
        """The outputs in the shape of the inputs: one output, or a list."""
        return self.outputs if self.is_list else self.outputs[0]

    def timings(self, finished_at: float) -> dict:
        started = self.started_at or finished_at
        return {
            "worker_queue_ms": round((started - self.received_at) * 1000, 2),
            "inference_ms": round(self.forward_s * 1000, 2),
            "worker_ms": round((finished_at - self.received_at) * 1000, 2),
            "batch_size": self.largest_batch,
        }


def job_from_message(message, **extra) -> Job:
    """Read a task message of `tasks.infer`; raise InvalidJob when it is not one."""
    headers = message.headers or {}
    job_id = headers.get("id")
    if not job_id:
        raise InvalidJob(None, "task message has no id")
    # JSON only: a message in any other format (pickle) is refused unread.
    if message.content_type != "application/json":
        raise InvalidJob(job_id, f"cannot decode the message body: content type {message.content_type!r} "
                                 "is not accepted (JSON only)")
    try:
        args, kwargs, _embed = orjson.loads(message.body)
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise InvalidJob(job_id, f"cannot decode the message body: {exc}") from None
    names = ("model_id", "inputs", "parameters", "is_list", "use_cache", "prefilled")
    if len(args) > len(names):
        raise InvalidJob(job_id, f"tasks.infer takes at most {len(names)} arguments")
    call = dict(zip(names, args))
    call.update(kwargs or {})
    unknown = set(call) - set(names)
    if unknown:
        raise InvalidJob(job_id, f"unknown argument(s): {', '.join(sorted(unknown))}")
    model_id, inputs = call.get("model_id"), call.get("inputs")
    params = call.get("parameters") or {}
    if not isinstance(model_id, str) or not model_id:
        raise InvalidJob(job_id, "model_id must be a non-empty string")
    is_list = call.get("is_list")
    if is_list is None:
        is_list = isinstance(inputs, list)
    if not isinstance(inputs, list):
        inputs = [inputs]
    if not inputs:
        raise InvalidJob(job_id, "inputs is empty")
    if not isinstance(params, dict):
        raise InvalidJob(job_id, "parameters must be an object")
    use_cache = call.get("use_cache", True)
    prefilled = call.get("prefilled") or {}
    try:
        prefilled = {int(k): v for k, v in prefilled.items()}
    except (AttributeError, TypeError, ValueError):
        raise InvalidJob(job_id, "prefilled must map input indexes to outputs") from None
    if any(not 0 <= k < len(inputs) for k in prefilled):
        raise InvalidJob(job_id, "prefilled names an input that does not exist")
    reply_to = (message.properties or {}).get("reply_to") or None
    expires_at = None
    if headers.get("expires"):
        try:
            expires_at = datetime.fromisoformat(headers["expires"]).timestamp()
        except (TypeError, ValueError):
            raise InvalidJob(job_id, f"expires is not an ISO 8601 time: {headers['expires']!r}") from None
    return Job(id=job_id, model_id=model_id, inputs=inputs, params=params, is_list=bool(is_list),
               reply_to=reply_to, message=message, expires_at=expires_at, use_cache=bool(use_cache),
               prefilled=prefilled, **extra)


def invalid_job_error(exc: InvalidJob) -> ValidationFailed:
    return ValidationFailed(f"invalid inference job: {exc}")
