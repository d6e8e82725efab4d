"""One access line per request, and the log context of the request (its ids on every line it logs).

gunicorn's own access log knows nothing of the route, the request id or
the job; this line, logged by the app as `webapp.access` at INFO, has
them: `POST /jobs 202 3.1 ms [model=minilm job=… req=…]` in text, and
the fields `method`, `route`, `status`, `duration_ms` beside the ids in
JSON. It names the route, never the path or the body: a path is the
client's text, and a job's inputs never reach a log (SPEC §10).
"""

from __future__ import annotations

import logging
import time

from flask import Flask, g, request

from common import logcontext
from webapp.requestids import request_id

log = logging.getLogger("webapp.access")


def init_app(app: Flask) -> None:
    """Bind the request's ids for its log lines, and log its access line."""

    @app.before_request
    def _begin():
        g.access_started = time.perf_counter()
        g.log_token = logcontext.start(request_id=request_id())

    @app.after_request
    def _access_line(response):
        started = g.get("access_started")
        duration_ms = round((time.perf_counter() - started) * 1000, 2) if started is not None else None
        route = request.url_rule.rule if request.url_rule else "unmatched"
        log.info("%s %s %d %s ms", request.method, route, response.status_code, duration_ms,
                 extra={"method": request.method, "route": route, "status": response.status_code,
                        "duration_ms": duration_ms, "request_id": request_id()})
        return response

    @app.teardown_request
    def _end(_exc):
        token = g.pop("log_token", None)
        if token is not None:
            logcontext.reset(token)  # the thread serves another request next: none of these ids stay

