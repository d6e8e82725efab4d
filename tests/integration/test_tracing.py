"""OpenTelemetry tracing (optional): a request's spans from the webapp and the worker, in one trace.

A real webapp and worker export over OTLP/HTTP to a small receiver on a
loopback port, which decodes what they send with the OTLP protobuf
definitions. Without the OTEL_* settings, or without the packages, nothing
is traced and nothing else changes.
"""

from __future__ import annotations

import gzip
import http.server
import secrets
import threading
import time

import pytest
import requests

from common import protocol
from tests.helpers import Webapp, Worker, service_env

pytest.importorskip("opentelemetry.sdk", reason="the optional extra requirements-otel.txt is not installed")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

MODEL = "minilm-traced"  # a queue of its own: only the traced worker takes its jobs
SERVER, CONSUMER = 2, 5  # OTLP's span kinds


class Receiver:
    """An OTLP/HTTP trace receiver on a free loopback port: the spans it got, decoded."""

    def __init__(self):
        self.spans: list[dict] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver._add(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _add(self, request) -> None:
        with self._lock:
            for resource_spans in request.resource_spans:
                service = _attributes(resource_spans.resource.attributes).get("service.name")
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(_span(service, span) for span in scope_spans.spans)

    def trace(self, trace_id: str) -> list[dict]:
        with self._lock:
            return [span for span in self.spans if span["trace_id"] == trace_id]

    def wait_for(self, trace_id: str, names: set, timeout: float = 30.0) -> dict:
        """The trace's spans by name, once every name in `names` has arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.trace(trace_id)
            if names <= {span["name"] for span in spans}:
                return {span["name"]: span for span in spans}
            time.sleep(0.05)
        raise AssertionError(f"spans {names} of trace {trace_id} never came; got {self.trace(trace_id)}")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def _attributes(pairs) -> dict:
    return {pair.key: _value(pair.value) for pair in pairs}


def _span(service: str, span) -> dict:
    return {
        "service": service, "name": span.name, "kind": span.kind,
        "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(), "parent": span.parent_span_id.hex(),
        "start": span.start_time_unix_nano, "end": span.end_time_unix_nano,
        "attributes": _attributes(span.attributes), "events": [event.name for event in span.events],
    }


def otel_env(endpoint: str) -> dict:
    """OpenTelemetry's standard settings: OTLP/HTTP to `endpoint`, spans sent within 50 ms."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50"}


def new_traceparent() -> tuple[str, str, str]:
    """A client's traceparent, with its trace id and span id."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def traced(redis_url, model_dir, log_dir, receiver):
    """A webapp and a worker (serving MODEL) that export their spans to the receiver."""
    env = {**service_env(redis_url, model_dir), **otel_env(receiver.endpoint)}
    worker = Worker("traced", {**env, "PRELOAD_MODELS": MODEL}, log_dir).wait_ready()
    app = Webapp(env, log_dir, "--workers", "1").wait_ready()
    yield app
    app.stop()
    worker.stop()


def test_one_request_is_one_trace_from_http_to_the_forward_pass(traced, receiver):
    """The spans HTTP → queue wait → batch → forward carry the client's trace id, each under the right parent."""
    traceparent, trace_id, client_span = new_traceparent()
    response = requests.post(traced.url + "/predict", timeout=60,
                             headers={"traceparent": traceparent, "X-Request-Id": "trace-me-1"},
                             json={"model_id": MODEL, "inputs": ["traced one", "traced two"],
                                   "options": {"use_cache": False}})
    assert response.status_code == 200, response.text
    job_id = response.json()["job_id"]

    spans = receiver.wait_for(trace_id, {"POST /predict", "queue wait", "batch", "forward"})
    http, wait, batch, forward = (spans[n] for n in ("POST /predict", "queue wait", "batch", "forward"))
    assert (http["service"], http["kind"], http["parent"]) == ("atf-webapp", SERVER, client_span)
    assert {wait["service"], batch["service"], forward["service"]} == {"atf-worker"}
    # Both worker spans of the job hang under the request's span; the forward pass under its batch.
    assert wait["parent"] == batch["parent"] == http["span_id"]
    assert forward["parent"] == batch["span_id"]
    assert wait["kind"] == CONSUMER and wait["events"] == ["received by the worker"]
    for span in (wait, batch):
        assert span["attributes"]["atf.job_id"] == job_id
        assert span["attributes"]["atf.request_id"] == "trace-me-1"
        assert span["attributes"]["atf.model_id"] == MODEL
    assert batch["attributes"]["atf.batch.size"] == 2
    assert job_id in batch["attributes"]["atf.batch.job_ids"]
    # The timeline: queued within the request, waited, then batched; the pass inside its batch.
    assert http["start"] <= wait["start"] <= wait["end"] <= batch["start"] <= forward["start"]
    assert forward["end"] <= batch["end"] <= http["end"]


def test_the_job_record_carries_the_webapps_span(traced, receiver, rdb):
    """With tracing on, the job's traceparent is the webapp's span (a child of the client's), not the client's."""
    traceparent, trace_id, _ = new_traceparent()
    response = requests.post(traced.url + "/jobs", timeout=60, headers={"traceparent": traceparent},
                             json={"model_id": MODEL, "inputs": "traced job", "options": {"use_cache": False}})
    assert response.status_code == 202, response.text
    http = receiver.wait_for(trace_id, {"POST /jobs", "batch"})["POST /jobs"]
    stored = rdb.hget(protocol.job_key(response.json()["job_id"]), "traceparent").decode()
    assert stored == f"00-{trace_id}-{http['span_id']}-01"


def test_untraced_services_pass_the_traceparent_on_unchanged(api, rdb):
    """Without OTEL_* settings (the session's services) nothing is traced: the client's traceparent goes on as sent."""
    traceparent, _, _ = new_traceparent()
    response = api.post("/predict", headers={"traceparent": traceparent},
                        json={"model_id": "minilm", "inputs": "not traced", "options": {"use_cache": False}})
    assert response.status_code == 200, response.text
    assert rdb.hget(protocol.job_key(response.json()["job_id"]), "traceparent").decode() == traceparent


def test_configured_without_the_packages_runs_untraced(redis_url, model_dir, log_dir, receiver, rdb, tmp_path):
    """OTEL_* set but OpenTelemetry not importable: both processes say so once, serve as usual, send no span."""
    shadow = tmp_path / "no-otel"  # first on the path: `import opentelemetry` fails, as when not installed
    (shadow / "opentelemetry").mkdir(parents=True)
    (shadow / "opentelemetry" / "__init__.py").write_text("raise ImportError('OpenTelemetry is not installed')\n")
    env = {**service_env(redis_url, model_dir), **otel_env(receiver.endpoint)}
    env["PYTHONPATH"] = f"{shadow}:{env['PYTHONPATH']}"
    worker = Worker("otel-absent", {**env, "PRELOAD_MODELS": "minilm-c"}, log_dir).wait_ready()
    app = Webapp(env, log_dir, "--workers", "1").wait_ready()
    try:
        traceparent, trace_id, _ = new_traceparent()
        response = requests.post(app.url + "/predict", timeout=60, headers={"traceparent": traceparent}, json={
            "model_id": "minilm-c", "inputs": "no packages", "options": {"use_cache": False}})
        assert response.status_code == 200, response.text
        assert rdb.hget(protocol.job_key(response.json()["job_id"]), "traceparent").decode() == traceparent
    finally:
        app.stop()
        worker.stop()
    for log in (worker.log(), app.log_path.read_text()):
        assert "OpenTelemetry is not installed" in log
        assert "Traceback" not in log
    assert receiver.trace(trace_id) == []  # both have exited: nothing of theirs can still arrive
