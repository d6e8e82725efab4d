"""One access line per request, and the log context of the request (its ids on every line it logs).

gunicorn's own access log knows nothing of the route, the request id or
the job; this line, logged by the app as `webapp.access` at INFO, has
them: `POST /jobs 202 3.1 ms [model=minilm job=… req=…]` in text, and
the fields `method`, `route`, `status`, `duration_ms` beside the ids in
JSON. It names the route, never the path or the body: a path is the
client's text, and a job's inputs never reach a log (SPEC §10).

The line is written when the server closes the response after its last
byte (PEP 3333: every WSGI server calls `close()`), as gunicorn writes
its own: the client never waits for it, and its duration runs from the
app's first hook to the answer's last byte. A file passed through to the
server as it is (Swagger UI's) is logged before it is sent.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, g, request

from common import logcontext
from webapp.requestids import request_id

log = logging.getLogger("webapp.access")


def request_started() -> float | None:
    """When the app's first hook saw the current request (`time.perf_counter`); None before that."""
    return g.get("request_started")


def route() -> str:
    """The current request's route rule, "unmatched" where none matched: never the client's path."""
    return request.url_rule.rule if request.url_rule else "unmatched"


def init_app(app: Flask) -> None:
    """Bind the request's ids for its log lines, time the request, and log its access line.

    /metrics times requests and labels their routes with this module's clock and route names.
    """

    @app.before_request
    def _begin():
        g.request_started = time.perf_counter()
        g.log_token = logcontext.start(request_id=request_id())

    @app.after_request
    def _access_line(response):
        # Written once the answer is sent, as gunicorn writes its own access
        # line: the client does not wait for it (the server closes the
        # response after its last byte). The request's context is gone by
        # then, so its ids are taken now.
        started = request_started()
        method, status, rule = request.method, response.status_code, route()
        fields = {**logcontext.current(), "method": method, "route": rule, "status": status,
                  "request_id": request_id()}

        def write():
            duration_ms = round((time.perf_counter() - started) * 1000, 2) if started is not None else None
            log.info("%s %s %d %s ms", method, rule, status, duration_ms,
                     extra={**fields, "duration_ms": duration_ms})

        if response.direct_passthrough:
            # A file sent as it is (send_from_directory): the server closes its
            # file, not the response, so no close callback would run.
            write()
        else:
            response.call_on_close(write)
        return response

    @app.teardown_request
    def _end(_exc):
        token = g.pop("log_token", None)
        if token is not None:
            logcontext.reset(token)  # the thread serves another request next: none of these ids stay

