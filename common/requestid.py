"""Request ids and W3C trace context: checked once where a request enters, then carried with its job.

The webapp takes them from the request's `X-Request-Id` and `traceparent`
headers, stores them on the job's record and puts them in the task
message's headers (keys `request_id`, `traceparent`); the worker reads
them back from there with the same checks, since any Celery client may
write a message. A value that fails its check is never passed on: a
request id is replaced by a generated one, a traceparent dropped.
"""

from __future__ import annotations

import re
import uuid

REQUEST_ID_HEADER = "X-Request-Id"
TRACEPARENT_HEADER = "traceparent"
# The task message's header keys (and the job record's fields).
REQUEST_ID_KEY = "request_id"
TRACEPARENT_KEY = "traceparent"

# Long enough for any tracing system's ids, short enough that one cannot fill a log line.
MAX_REQUEST_ID_CHARS = 128
# Printable ASCII; spaces only inside, so an id never hides its ends in a log line.
_REQUEST_ID = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,%d}[\x21-\x7e])?" % (MAX_REQUEST_ID_CHARS - 2))
# W3C Trace Context, version 00: lowercase hex; an all-zero trace or parent id is invalid.
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


def new_request_id() -> str:
    """A fresh request id: a uuid4 in hex."""
    return uuid.uuid4().hex


def valid_request_id(value) -> str | None:
    """`value` when it is a request id we may carry and log, else None."""
    return value if isinstance(value, str) and _REQUEST_ID.fullmatch(value) else None


def valid_traceparent(value) -> str | None:
    """`value` when it is a well-formed W3C traceparent (version 00), else None."""
    return value if isinstance(value, str) and _TRACEPARENT.fullmatch(value) else None


def message_headers(request_id: str | None, traceparent: str | None) -> dict:
    """The task message headers that carry a job's ids (only those known)."""
    headers = {}
    if request_id:
        headers[REQUEST_ID_KEY] = request_id
    if traceparent:
        headers[TRACEPARENT_KEY] = traceparent
    return headers
