"""The webapp's spans: one server span per request, and the trace context its job carries.

The server span comes from the kept Flask instrumentation, which also
continues the trace of an incoming `traceparent`. A job's message then
carries this span's traceparent instead of the client's
(webapp/requestids.py), so the worker's spans hang under the request that
queued the job, and the time it was queued (webapp/job_service.py). Off, none of
this is installed.
"""

from __future__ import annotations

import os

from flask import Flask

from common import otel

# Probes and scrapes come every few seconds and say nothing about a job:
# no spans for them, unless OTEL_PYTHON_FLASK_EXCLUDED_URLS says otherwise.
DEFAULT_EXCLUDED_URLS = "/health,/metrics"


def init_app(app: Flask) -> bool:
    """Trace the app's requests when tracing is configured; True when it is on.

    Called before the other hooks are registered, so that requests refused
    early (401, 429) get their span too.
    """
    if otel.setup("atf-webapp") is None:
        return False
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    excluded = None if os.environ.get("OTEL_PYTHON_FLASK_EXCLUDED_URLS") else DEFAULT_EXCLUDED_URLS
    FlaskInstrumentor().instrument_app(app, excluded_urls=excluded)
    return True

