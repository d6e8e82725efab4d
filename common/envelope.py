"""Celery's and kombu's wire format: the envelopes around a task's message and its result.

Where the service speaks Celery's or kombu's format itself (for speed:
`send_task` and kombu's producer cost about a millisecond of CPU per job),
it does so here and nowhere else:

- **Task messages** on a Redis broker: one JSON document per list element
  (the body in base64, its content type, Celery's task headers, kombu's
  properties). The webapp writes them (`write`); the workers read what
  they fetch (`read`, then `arguments`) whoever sent it — the webapp or
  any Celery client's `send_task`.
- **Queue lists**: kombu keeps a queue's messages of priority 3, 6 and 9
  in lists of their own, read after the plain list (`lists_of`).
- **Results**: the documents of Celery's Redis result backend, under
  `celery-task-meta-<id>` (common/protocol.py `result_key`), which any
  Celery client's `AsyncResult` reads: `success`, `failure` (and a
  revoked job, stored as Celery stores one), `dumps`; the webapp reads
  them back with `READY_STATES` and `error_fields`.

Acks are not kombu's: the workers fetch from these lists through
common/deliveries.py and never write kombu's `unacked` hash, so an ack
(an HDEL in common/lua/store_results.lua) leaves kombu nothing to restore.

tests/integration/test_wire_contract.py checks all of it against the
pinned Celery and kombu: when Celery changes a header, that test says so.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import orjson

from common import protocol

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

# kombu/transport/redis.py: a queue's priority lists are `<queue>\x06\x16<step>`.
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)

# Celery's result states, and those after which a result no longer changes.
SUCCESS, FAILURE, REVOKED = "SUCCESS", "FAILURE", "REVOKED"
READY_STATES = (SUCCESS, FAILURE, REVOKED)


class BadEnvelope(Exception):
    """Raised when a list element or a message body is not what a Celery client could have written."""


# -- queue lists ---------------------------------------------------------


def lists_of(queue: str) -> list[str]:
    """The Redis lists kombu keeps for `queue`, in the order it reads them."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


def queue_of(list_key: str) -> str:
    """The queue a list of `lists_of` belongs to."""
    return list_key.split(PRIORITY_SEP, 1)[0]


# -- task messages -------------------------------------------------------


@dataclass
class Envelope:
    """A task message as the worker reads it, whatever transport brought it."""

    headers: dict
    properties: dict
    content_type: str
    body: bytes  # decoded: the task's JSON `[args, kwargs, embed]`
    raw: bytes = field(default=b"", repr=False)  # the list element as fetched (Redis only)

    @property
    def job_id(self) -> str | None:
        job_id = self.headers.get("id")
        return job_id if isinstance(job_id, str) and job_id else None

    @classmethod
    def from_kombu(cls, message) -> "Envelope":
        """The envelope of a message kombu delivered (RabbitMQ)."""
        return cls(headers=dict(message.headers or {}), properties=dict(message.properties or {}),
                   content_type=message.content_type or "", body=message.body)


def write(job_id: str, queue: str, kwargs: dict, reply_to: str, origin: str, expires: str | None = None,
          kwargsrepr: str = "{}", extra_headers: dict | None = None) -> bytes:
    """The message exactly as kombu's Redis transport stores it.

    `extra_headers` are added to Celery's task headers, as `send_task(headers=...)` adds them
    (the job's request id and traceparent: common/requestid.py).
    """
    body = orjson.dumps([[], kwargs, _EMBED])
    return orjson.dumps({
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": protocol.INFER_TASK, "id": job_id, "shadow": None,
            "eta": None, "expires": expires, "group": None, "group_index": None, "retries": 0,
            "timelimit": [None, None], "root_id": job_id, "parent_id": None,
            "argsrepr": "()", "kwargsrepr": kwargsrepr, "origin": origin,
            "ignore_result": True, "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
            **(extra_headers or {}),
        },
        "properties": {
            "correlation_id": job_id, "reply_to": reply_to, "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        },
    })


def read(raw: bytes) -> Envelope:
    """Parse one list element; BadEnvelope when it is not a kombu message."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadEnvelope(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadEnvelope("not a JSON object")
    headers, properties = doc.get("headers"), doc.get("properties")
    if not isinstance(headers, dict) or not isinstance(properties, dict):
        raise BadEnvelope("no headers or properties")
    body = doc.get("body")
    if not isinstance(body, str):
        raise BadEnvelope("the body is not a string")
    encoding = properties.get("body_encoding")
    if encoding == "base64":
        try:
            decoded = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise BadEnvelope("the body is not valid base64") from None
    elif encoding in (None, ""):
        decoded = body.encode()
    else:
        raise BadEnvelope(f"unknown body encoding {encoding!r}")
    content_type = doc.get("content-type")
    return Envelope(headers=headers, properties=properties,
                    content_type=content_type if isinstance(content_type, str) else "", body=decoded, raw=raw)


def arguments(message: Envelope) -> tuple[list, dict]:
    """The task's `(args, kwargs)` from Celery's message body; BadEnvelope when it has none.

    JSON only: a body in any other format (pickle) is refused unread.
    """
    if message.content_type != "application/json":
        raise BadEnvelope(f"cannot decode the message body: content type {message.content_type!r} "
                          "is not accepted (JSON only)")
    try:
        body = orjson.loads(message.body)
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise BadEnvelope(f"cannot decode the message body: {exc}") from None
    if not isinstance(body, list) or len(body) != 3:
        raise BadEnvelope("the message body must be [args, kwargs, embed]")
    args, kwargs, _embed = body
    if not isinstance(args, list):
        raise BadEnvelope("the task's args must be a list")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise BadEnvelope("the task's kwargs must be an object")
    return args, kwargs


# -- results -------------------------------------------------------------


def now() -> str:
    """A result's `date_done`, as Celery writes it."""
    return datetime.now(timezone.utc).isoformat()


def success(job_id: str, result, date_done: str) -> dict:
    """The result document of a task that returned `result`."""
    return {"status": SUCCESS, "result": result, "traceback": None, "children": [],
            "date_done": date_done, "task_id": job_id}


def failure(job_id: str, error: BaseException, date_done: str, traceback: str | None = None,
            state: str = FAILURE) -> dict:
    """The result document of a task that raised `error` (or, with `state` REVOKED, was revoked).

    `AsyncResult.get()` raises the error again, rebuilt from its class name,
    module and message: the message is the error's `message` when it has one.
    """
    return {
        "status": state,
        "result": {"exc_type": type(error).__name__, "exc_message": [str(getattr(error, "message", error))],
                   "exc_module": type(error).__module__},
        "traceback": traceback,
        "children": [],
        "date_done": date_done,
        "task_id": job_id,
    }


def dumps(meta: dict) -> bytes:
    """A result document as stored (numpy outputs written as float32's shortest decimals)."""
    return orjson.dumps(meta, option=orjson.OPT_SERIALIZE_NUMPY)


def with_fields(document: bytes, fields: dict) -> bytes:
    """A stored document with more top-level `fields` (at least one), without encoding the document again."""
    return document[:-1] + b"," + orjson.dumps(fields)[1:]


def error_fields(meta: dict) -> tuple[str | None, str]:
    """(exception class name, message) of a failed or revoked result."""
    result = meta.get("result") or {}
    if not isinstance(result, dict):
        return None, str(result)
    args = result.get("exc_message") or []
    message = args[0] if isinstance(args, list) and args else str(args)
    return result.get("exc_type"), str(message)
