"""OpenTelemetry tracing, optional: on when it is installed and configured, otherwise nothing.

The switch is OpenTelemetry's own environment, so a deployment that
already sets it for its other services needs nothing new: tracing is on
when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`) or an
OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), unless `OTEL_SDK_DISABLED=true` or
`OTEL_TRACES_EXPORTER=none`. The SDK reads the rest itself (headers,
sampler, batch delays, `OTEL_SERVICE_NAME`). The packages are the optional
requirements-otel.txt: configured without them, a process says so once
and runs untraced.

Off, `setup()` returns None and imports nothing of OpenTelemetry; the
callers keep that None and test it, which is all tracing costs them.
These settings are not in common/settings.py because the SDK, not this
project, reads and owns them.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

log = logging.getLogger(__name__)

# The message header (beside `traceparent`) that carries when the webapp queued
# the job, in seconds since the epoch: where the worker's `queue wait` span starts.
ENQUEUED_AT_KEY = "enqueued_at"

_tracer = None


def exporters_asked(env: Mapping[str, str] = os.environ) -> list[str]:
    """The span exporters the environment asks for; empty when tracing is off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names and (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        names = ["otlp"]
    return [n for n in names if n != "none"]


def setup(service_name: str):
    """Install a tracer provider for this process; its tracer, or None when tracing is off.

    `service_name` is the default of `OTEL_SERVICE_NAME`. Called once per
    process, after any fork (gunicorn's workers each call it).
    """
    global _tracer
    names = exporters_asked()
    if not names:
        return None
    if _tracer is not None:
        return _tracer
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_* settings ask for traces, but OpenTelemetry is not installed "
                    "(pip install -r requirements-otel.txt): running without tracing")
        return None
    exporters = [exporter for exporter in map(_exporter, names) if exporter is not None]
    if not exporters:
        return None
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    for exporter in exporters:
        # Spans leave on the processor's own thread, never on a request's or the device's.
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("atf")
    log.info("tracing on: spans of %s go to %s", service_name, ", ".join(names))
    return _tracer


def _exporter(name: str):
    """The span exporter `OTEL_TRACES_EXPORTER` names (None, with a warning, when unknown or missing)."""
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported here (otlp, console, none): ignored", name)
        return None
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        log.warning("no OTLP exporter for protocol %s is installed (see requirements-otel.txt): "
                    "its spans are not sent", protocol)
        return None
    return OTLPSpanExporter()


def enabled() -> bool:
    """Whether this process traces (setup() installed a tracer)."""
    return _tracer is not None


def traceparent() -> str | None:
    """The W3C traceparent of the current span, or None when there is none (or tracing is off)."""
    if _tracer is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


def remote_context(traceparent_value: str | None):
    """The OpenTelemetry context a carried traceparent names (an empty one without it)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {"traceparent": traceparent_value} if traceparent_value else {}
    return TraceContextTextMapPropagator().extract(carrier)
