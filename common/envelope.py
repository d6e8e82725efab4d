"""kombu's Redis message envelope: written by the webapp, read by the workers.

A Celery task message on a Redis broker is one JSON document per list
element: the body (base64), its content type, Celery's task headers and
kombu's properties. The webapp writes it without going through kombu
(`write`), and the workers read what they fetch from a queue (`read`) —
whether the webapp or any other Celery client (`send_task`) sent it.
This module is the only place that knows the format; the contract test
(tests/integration/test_envelope.py) checks it against the pinned kombu.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass, field

import orjson

from common import protocol

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class BadEnvelope(Exception):
    """Raised when a list element is not a message kombu could have written."""


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
