"""The tracing switch (OpenTelemetry's own settings) and the worker's spans of a batch."""

import time

import pytest

from common.errors import InferenceFailed
from common.otel import exporters_asked
from tasks.job import Job


@pytest.mark.parametrize("env, asked", [
    ({}, []),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
    ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ["otlp", "console"]),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, []),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
])
def test_tracing_is_on_only_when_an_exporter_is_asked_for(env, asked):
    assert exporters_asked(env) == asked


@pytest.fixture
def recorded():
    """BatchSpans on a tracer of its own whose finished spans are kept in memory."""
    pytest.importorskip("opentelemetry.sdk", reason="the optional extra requirements-otel.txt is not installed")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tasks.job_spans import BatchSpans

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return BatchSpans(provider.get_tracer("test"), "w@test"), exporter


def job(job_id, traceparent=None):
    return Job(id=job_id, model_id="m", inputs=["a", "b"], params={}, is_list=True, traceparent=traceparent,
               request_id=f"req-{job_id}")


def test_a_job_in_two_batches_waits_once_and_gets_a_batch_span_per_batch(recorded):
    spans, exporter = recorded
    sent = job("j1", "00-" + "a" * 32 + "-" + "b" * 16 + "-01")
    other = job("j2", "00-" + "c" * 32 + "-" + "d" * 16 + "-01")
    now = time.time()
    spans.batch_ran("m", [sent, other], 2, now, now + 0.001, 0.01, 1)
    spans.batch_ran("m", [sent], 1, now + 0.02, now + 0.021, 0.01, 1)
    finished = exporter.get_finished_spans()
    names = [s.name for s in finished if s.context.trace_id == int("a" * 32, 16)]
    assert sorted(names) == ["batch", "batch", "forward", "forward", "queue wait"]
    first = next(s for s in finished if s.name == "batch" and s.attributes["atf.batch.size"] == 2
                 and s.attributes["atf.job_id"] == "j1")
    assert first.parent.span_id == int("b" * 16, 16)
    assert list(first.attributes["atf.batch.job_ids"]) == ["j1", "j2"]
    assert first.attributes["atf.request_id"] == "req-j1"
    twin = next(s for s in finished if s.name == "batch" and s.attributes["atf.job_id"] == "j2")
    assert twin.attributes["atf.batch.id"] == first.attributes["atf.batch.id"]  # the same batch, other trace


def test_a_job_without_trace_context_starts_its_trace_at_its_queue_wait(recorded):
    spans, exporter = recorded
    now = time.time()
    spans.batch_ran("m", [job("j3")], 1, now, now, 0.01, 1)
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    assert by_name["queue wait"].parent is None
    assert by_name["batch"].parent.span_id == by_name["queue wait"].context.span_id
    assert by_name["forward"].parent.span_id == by_name["batch"].context.span_id


def test_a_failed_job_marks_its_batch_span(recorded):
    from opentelemetry.trace import StatusCode

    spans, exporter = recorded
    failed = job("j4")
    failed.fail(InferenceFailed("the model failed on inputs[0]"))
    now = time.time()
    spans.batch_ran("m", [failed], 1, now, now, 0.01, 2)
    batch = next(s for s in exporter.get_finished_spans() if s.name == "batch")
    assert batch.status.status_code == StatusCode.ERROR and batch.status.description == "inference_failed"
