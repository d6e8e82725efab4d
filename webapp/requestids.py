"""Each request's id and trace context: taken from its headers (checked) or made, echoed on its response.

`X-Request-Id` is kept when it passes common/requestid.py's check and
replaced by a generated one otherwise; `traceparent` is kept when well
formed and dropped otherwise. Every response, errors included, carries
the request id back, and jobs the request creates carry both
(webapp/job_service.py).
"""

from __future__ import annotations

from flask import Flask, g, request

from common import otel
from common.requestid import (
    REQUEST_ID_HEADER,
    TRACEPARENT_HEADER,
    new_request_id,
    valid_request_id,
    valid_traceparent,
)


def request_id() -> str:
    """The current request's id (read from its header on first use)."""
    return _ids()[0]


def traceparent() -> str | None:
    """The trace context its jobs carry: this request's span when tracing is on, else the one it sent (if valid)."""
    return otel.traceparent() or _ids()[1]


def _ids() -> tuple[str, str | None]:
    ids = g.get("atf_ids")
    if ids is None:
        ids = (valid_request_id(request.headers.get(REQUEST_ID_HEADER)) or new_request_id(),
               valid_traceparent(request.headers.get(TRACEPARENT_HEADER)))
        g.atf_ids = ids
    return ids


def init_app(app: Flask) -> None:
    """Read the ids before anything else runs; echo the request id on every response."""

    @app.before_request
    def _take_ids():
        _ids()  # a before_request hook that returns a value answers the request: return nothing

    @app.after_request
    def _echo(response):
        # Also reached from the error handlers, and for a request refused before its view (401, 429).
        response.headers[REQUEST_ID_HEADER] = request_id()
        return response
