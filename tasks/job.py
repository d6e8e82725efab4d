"""A job as the worker holds it: one Celery task message with 1..N items."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from common.cache_keys import cache_key
from common.envelope import BadEnvelope, Envelope, arguments
from common.errors import ServiceError, ValidationFailed
from common.protocol import INFER_TASK
from common.requestid import REQUEST_ID_KEY, TRACEPARENT_KEY, valid_request_id, valid_traceparent


class InvalidJob(Exception):
    """Raised when a task message cannot be read as an inference job."""

    def __init__(self, job_id: str | None, reason: str):
        super().__init__(reason)
        self.job_id = job_id


def params_key(params: dict) -> str:
    """Equal for equal parameters (keys sorted): items share a batch only with equal keys."""
    try:
        return orjson.dumps(params, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # what orjson cannot write: an integer past 64 bits in another client's message
        return json.dumps(params, sort_keys=True)


@dataclass(eq=False)
class Job:
    """One job in the worker, from receipt to its stored result and ack."""

    id: str
    model_id: str
    inputs: list
    params: dict
    is_list: bool
    reply_to: str | None = None
    message: Envelope | None = None
    source: object = None  # the JobSource it came from (tasks/sources.py): it acks and hands back
    tag: object = None  # its delivery there: a Redis delivery tag, or kombu's message
    holder: str | None = None  # the holder that fetched it (Redis broker)
    received_at: float = field(default_factory=time.time)
    enqueued_at: float | None = None  # when the webapp queued it (its record's created_at), once started
    expires_at: float | None = None  # Celery's `expires`: drop the job unrun after this
    started_at: float | None = None
    outputs: list = field(default_factory=list)
    remaining: int = 0
    error: ServiceError | None = None
    cancelled: bool = False
    skipped: bool = False  # another worker stored its result already: acked, not run, not stored
    alone: bool = False  # started before and never finished: runs in a batch of its own
    largest_batch: int = 0
    todo: int = 0  # items the worker computes (not prefilled)
    forward_s: float = 0.0
    use_cache: bool = True  # write the outputs to the response cache
    prefilled: dict = field(default_factory=dict)  # index -> output the webapp had cached
    cache_keys: list = field(default_factory=list)  # per input, once the worker knows the model
    # From the message's headers (common/requestid.py); None from a client that sent none.
    request_id: str | None = None
    traceparent: str | None = None
    trace_parent: object = None  # tracing on: the context its batch spans go under (tasks/job_spans.py)

    def __post_init__(self):
        self.params_key = params_key(self.params)
        self.outputs = [None] * len(self.inputs)
        for index, output in self.prefilled.items():
            self.outputs[index] = output
        self.remaining = len(self.inputs) - len(self.prefilled)
        self.cache_keys = [None] * len(self.inputs)

    def use_params(self, params: dict) -> None:
        """Run with `params`, the message's as validated (defaults filled in): what was checked is what runs."""
        self.params = params
        self.params_key = params_key(params)

    @property
    def cacheable(self) -> bool:
        """Sampled generations differ run to run: never cached, never shared."""
        return self.use_cache and not self.params.get("do_sample")

    @property
    def done(self) -> bool:
        return self.cancelled or self.skipped or self.error is not None or self.remaining == 0

    @property
    def batch_key(self) -> str:
        """Items share a batch only with equal keys: equal parameters, and never a job running alone."""
        return f"{self.params_key}|alone:{self.id}" if self.alone else self.params_key

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


_ARG_NAMES = ("model_id", "inputs", "parameters", "is_list", "use_cache", "prefilled")


def job_from_envelope(message: Envelope, **extra) -> Job:
    """Read a task message of `tasks.infer`; raise InvalidJob when it is not one.

    Any message a client can put on a queue ends here as a Job or as
    InvalidJob, never as another exception: a worker must not die of a
    message (Celery would restore it, and it would kill the next worker).
    """
    job_id = message.job_id
    try:
        return _read(message, job_id, extra)
    except InvalidJob:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the shape, the message is refused, not fatal
        # The class only: the reason is logged, and the exception's text may quote the inputs.
        raise InvalidJob(job_id, f"unreadable job: {type(exc).__name__}") from None


def _read(message: Envelope, job_id: str | None, extra: dict) -> Job:
    headers = message.headers
    if not job_id:
        raise InvalidJob(None, "task message has no id")
    if headers.get("task") not in (None, INFER_TASK):
        raise InvalidJob(job_id, f"task {headers.get('task')!r} is not {INFER_TASK}")
    try:
        args, kwargs = arguments(message)
    except BadEnvelope as exc:
        raise InvalidJob(job_id, str(exc)) from None
    if len(args) > len(_ARG_NAMES):
        raise InvalidJob(job_id, f"tasks.infer takes at most {len(_ARG_NAMES)} arguments")
    call = dict(zip(_ARG_NAMES, args))
    unknown = set(kwargs) - set(_ARG_NAMES)
    if unknown:
        raise InvalidJob(job_id, f"unknown argument(s): {', '.join(sorted(map(str, unknown)))}")
    twice = set(call) & set(kwargs)
    if twice:
        raise InvalidJob(job_id, f"argument(s) given twice: {', '.join(sorted(twice))}")
    call.update(kwargs)
    model_id, inputs = call.get("model_id"), call.get("inputs")
    params = call.get("parameters")
    if params is None:
        params = {}
    if not isinstance(model_id, str) or not model_id:
        raise InvalidJob(job_id, "model_id must be a non-empty string")
    is_list = call.get("is_list")
    if is_list is None:
        is_list = isinstance(inputs, list)
    if not isinstance(is_list, bool):
        raise InvalidJob(job_id, "is_list must be true or false")
    if inputs is None:
        raise InvalidJob(job_id, "inputs is required")
    if not isinstance(inputs, list):
        inputs = [inputs]
    if not inputs:
        raise InvalidJob(job_id, "inputs is empty")
    if not isinstance(params, dict):
        raise InvalidJob(job_id, "parameters must be an object")
    use_cache = call.get("use_cache", True)
    if not isinstance(use_cache, bool):
        raise InvalidJob(job_id, "use_cache must be true or false")
    prefilled = call.get("prefilled") or {}
    if not isinstance(prefilled, dict):
        raise InvalidJob(job_id, "prefilled must map input indexes to outputs")
    try:
        prefilled = {int(k): v for k, v in prefilled.items()}
    except (TypeError, ValueError):
        raise InvalidJob(job_id, "prefilled must map input indexes to outputs") from None
    if any(not 0 <= k < len(inputs) for k in prefilled):
        raise InvalidJob(job_id, "prefilled names an input that does not exist")
    reply_to = message.properties.get("reply_to") or None
    if reply_to is not None and not isinstance(reply_to, str):
        raise InvalidJob(job_id, "reply_to must be a string")
    expires_at = None
    if headers.get("expires"):
        try:
            expires_at = datetime.fromisoformat(headers["expires"]).timestamp()
        except (TypeError, ValueError):
            raise InvalidJob(job_id, f"expires is not an ISO 8601 time: {headers['expires']!r}") from None
    return Job(id=job_id, model_id=model_id, inputs=inputs, params=params, is_list=is_list,
               reply_to=reply_to, message=message, expires_at=expires_at, use_cache=use_cache,
               prefilled=prefilled, request_id=valid_request_id(headers.get(REQUEST_ID_KEY)),
               traceparent=valid_traceparent(headers.get(TRACEPARENT_KEY)), **extra)


def invalid_job_error(exc: InvalidJob) -> ValidationFailed:
    return ValidationFailed(f"invalid inference job: {exc}")
