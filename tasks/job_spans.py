"""The worker's spans: each job's queue wait, and the batches and forward passes it ran in.

Jobs do not run as Celery task calls here (the batcher runs the items of
many jobs in one forward pass, and the webapp writes task messages itself),
so Celery's own instrumentation would see nothing: these spans are made by
hand, after each batch, with the times the batcher measured.

A batch serves many jobs, each in its own trace, and a span has one
parent. One batch span linked to every job would live in a trace of its
own, and a request's trace in Jaeger would show only a link where the
batch's time goes. So each job gets its own `batch` span (with its
`forward` child) in its own trace, and the spans of one batch share
`atf.batch.id` and list every job in `atf.batch.job_ids`: find the
others by that tag.

    POST /predict (webapp)
    ├── queue wait      queued by the webapp → its first batch starts (event: received by the worker)
    └── batch           marking its jobs running → its forward pass done
        └── forward     the forward pass(es) of that batch
"""

from __future__ import annotations

import itertools
import logging
import time

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from common import otel
from tasks.job import Job

log = logging.getLogger(__name__)


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class BatchSpans:
    """Records spans for the batches a worker runs (device thread)."""

    def __init__(self, tracer, worker: str):
        self._tracer = tracer
        self._worker = worker
        self._seq = itertools.count(1)

    def batch_ran(self, model_id: str, jobs: list[Job], batch_size: int, started_at: float,
                  forward_at: float, forward_s: float, passes: int) -> None:
        """One batch of `batch_size` items of `jobs` ran: started_at → now, its forward passes from forward_at.

        Never raises: a tracing fault must not cost the batch its results.
        """
        try:
            self._record(model_id, jobs, batch_size, started_at, forward_at, forward_s, passes)
        except Exception:  # noqa: BLE001 - the batch's jobs are finished whatever happens here
            log.warning("could not record the spans of a %s batch", model_id, exc_info=True)

    def _record(self, model_id, jobs, batch_size, started_at, forward_at, forward_s, passes) -> None:
        ended = time.time_ns()
        batch_id = f"{self._worker}/{next(self._seq)}"
        job_ids = [job.id for job in jobs]
        for job in jobs:
            if job.trace_parent is None:
                job.trace_parent = self._queue_wait(job, started_at)
            attributes = {
                "atf.model_id": model_id, "atf.job_id": job.id, "atf.batch.id": batch_id,
                "atf.batch.size": batch_size, "atf.batch.job_ids": job_ids, "atf.worker": self._worker,
            }
            if job.request_id:
                attributes["atf.request_id"] = job.request_id
            batch = self._tracer.start_span("batch", context=job.trace_parent, start_time=_ns(started_at),
                                            attributes=attributes)
            if job.error is not None:
                batch.set_status(Status(StatusCode.ERROR, job.error.type))
            forward = self._tracer.start_span(
                "forward", context=trace.set_span_in_context(batch), start_time=_ns(forward_at),
                attributes={"atf.model_id": model_id, "atf.batch.size": batch_size, "atf.forward.passes": passes})
            forward.end(end_time=_ns(forward_at + forward_s))
            batch.end(end_time=ended)

    def _queue_wait(self, job: Job, batch_at: float):
        """Record the job's `queue wait`, up to its first batch at `batch_at`; the context its batch spans go under.

        The wait starts when the webapp queued the job (its message says
        when) or, from a client that did not say, when this worker got it.
        A job that came without a traceparent starts its trace here.
        """
        parent = otel.remote_context(job.traceparent)
        attributes = {"atf.model_id": job.model_id, "atf.job_id": job.id, "atf.worker": self._worker}
        if job.request_id:
            attributes["atf.request_id"] = job.request_id
        span = self._tracer.start_span("queue wait", context=parent, kind=SpanKind.CONSUMER,
                                       start_time=_ns(_enqueued_at(job)), attributes=attributes)
        span.add_event("received by the worker", timestamp=_ns(job.received_at))
        span.end(end_time=_ns(max(batch_at, job.received_at)))
        return parent if job.traceparent else trace.set_span_in_context(span)


def _enqueued_at(job: Job) -> float:
    """When the job was queued, from its message; never after this worker got it (clocks differ)."""
    headers = job.message.headers if job.message is not None else {}
    sent = headers.get(otel.ENQUEUED_AT_KEY)
    if isinstance(sent, (int, float)) and not isinstance(sent, bool) and 0 < sent < job.received_at:
        return float(sent)
    return job.received_at
