"""GET /metrics: Prometheus text format.

Under gunicorn each worker process counts its own requests; with
PROMETHEUS_MULTIPROC_DIR set (gunicorn.conf.py sets it) the scrape adds
them up across processes. The fleet's side — queue depths from the broker,
the workers' registry entries, the counters and histograms the workers keep
in Redis (common/batchstats.py) — is read at each scrape by the process
answering it, so one scrape of the API shows the whole fleet (README,
"Metrics", lists every metric).
"""

from __future__ import annotations

import os
import time

import redis
from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from common import batchstats
from common.errors import BrokerUnavailable
from common.protocol import MODELS_KEY, batch_stats_key
from webapp import accesslog

_REDIS_ERRORS = (redis.RedisError, OSError)

REQUESTS = Counter(
    "atf_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
LATENCY = Histogram(
    "atf_http_request_duration_seconds", "Time to answer an HTTP request", ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
JOBS = Counter("atf_jobs_submitted_total", "Jobs published to the workers", ["model_id"])

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class FleetCollector:
    """The workers' and the broker's side of /metrics, read from Redis at each scrape.

    A collector, not gauges set by a thread: under gunicorn the scrape's
    own process reads the fleet's totals once (gauges written to
    PROMETHEUS_MULTIPROC_DIR would be added up across the processes).
    Whatever cannot be read (Redis down) is left out; the scrape answers.
    """

    def __init__(self, client, workers, publisher):
        self._redis = client  # the result store: the batch statistics (tasks/reporting.py writes them there)
        self._workers = workers  # WorkerDirectory
        self._publisher = publisher  # queue_depths() from the broker

    def collect(self):
        live = self._live_workers()
        stats = self._model_stats()
        models = sorted(set(stats) | {m for w in live or () for m in w.get("models", {})})
        if live is not None:
            yield from self._worker_families(live, models)
        if stats:
            yield from self._batch_families(stats)
        depths = self._queue_depths(models)
        if depths is not None:
            depth = GaugeMetricFamily("atf_queue_depth", "Jobs waiting in the model's broker queue",
                                      labels=["model_id"])
            for model_id, count in depths.items():
                depth.add_metric([model_id], count)
            yield depth

    def _live_workers(self) -> list[dict] | None:
        try:
            return self._workers.live(fresh=True)
        except BrokerUnavailable:
            return None

    def _model_stats(self) -> dict[str, dict[str, float]]:
        """Per model its statistics hash (common/batchstats.py); empty when Redis cannot be read."""
        try:
            models = sorted(m.decode() for m in self._redis.smembers(MODELS_KEY))
            with self._redis.pipeline(transaction=False) as pipe:
                for model_id in models:
                    pipe.hgetall(batch_stats_key(model_id))
                raw = pipe.execute()
        except _REDIS_ERRORS:
            return {}
        return {m: {k.decode(): float(v) for k, v in fields.items()} for m, fields in zip(models, raw)}

    def _queue_depths(self, models: list[str]) -> dict[str, int] | None:
        try:
            return self._publisher.queue_depths(models)
        except Exception:  # noqa: BLE001 - any broker's error: the scrape goes on without the depths
            return None

    @staticmethod
    def _worker_families(live: list[dict], models: list[str]):
        up = GaugeMetricFamily("atf_workers_up", "Workers whose heartbeat is recent")
        up.add_metric([], len(live))
        in_flight = GaugeMetricFamily("atf_jobs_in_flight", "Jobs a worker has taken and not finished",
                                      labels=["model_id"])
        rss = GaugeMetricFamily("atf_worker_rss_bytes", "Resident memory of the worker process",
                                labels=["worker"])
        gpu = GaugeMetricFamily("atf_worker_gpu_memory_bytes",
                                "CUDA memory the worker's allocator holds (reserved; 0 on CPU)", labels=["worker"])
        load = GaugeMetricFamily("atf_model_load_seconds", "How long the worker's last load of the model took",
                                 labels=["model_id", "worker"])
        held = dict.fromkeys(models, 0)
        for worker in live:
            name = worker.get("name", "")
            memory = worker.get("memory") or {}
            rss.add_metric([name], memory.get("rss") or 0)
            gpu.add_metric([name], (memory.get("gpu") or {}).get("reserved", 0))
            for model_id, count in (worker.get("in_hand") or {}).items():
                held[model_id] = held.get(model_id, 0) + count
            for model_id, model in worker.get("models", {}).items():
                if "load_seconds" in model:
                    load.add_metric([model_id, name], model["load_seconds"])
        for model_id, count in sorted(held.items()):
            in_flight.add_metric([model_id], count)
        yield from (up, in_flight, rss, gpu, load)

    @staticmethod
    def _batch_families(stats: dict[str, dict[str, float]]):
        batches = CounterMetricFamily("atf_batches", "Forward passes run by the workers", labels=["model_id"])
        items = CounterMetricFamily("atf_batch_items", "Items run through forward passes", labels=["model_id"])
        seconds = CounterMetricFamily("atf_batch_forward_seconds", "Time spent in forward passes",
                                      labels=["model_id"])
        sizes = HistogramMetricFamily("atf_batch_size", "Items per forward pass", labels=["model_id"])
        tokens = CounterMetricFamily("atf_batch_tokens", "Real tokens of the items in batches", labels=["model_id"])
        padded = CounterMetricFamily("atf_batch_padded_tokens", "Tokens of batches padded to their longest item",
                                     labels=["model_id"])
        padding = GaugeMetricFamily("atf_batch_padding_ratio",
                                    "Share of the batches' tokens that were padding, since the counters began",
                                    labels=["model_id"])
        queued = HistogramMetricFamily("atf_job_queue_seconds", "From a job's enqueue to the start of its batch",
                                       labels=["model_id"])
        inference = HistogramMetricFamily("atf_job_inference_seconds",
                                          "From the start of a job's batch to its result ready", labels=["model_id"])
        failed = CounterMetricFamily("atf_jobs_failed", "Jobs failed, by error type", labels=["model_id", "type"])
        redelivered = CounterMetricFamily("atf_jobs_redelivered", "Jobs started again after their worker died",
                                          labels=["model_id"])
        for model_id, data in stats.items():
            batches.add_metric([model_id], data.get("batches", 0))
            items.add_metric([model_id], data.get("items", 0))
            seconds.add_metric([model_id], data.get("forward_seconds", 0))
            exact = {int(k[5:]): v for k, v in data.items() if k.startswith("size:")}
            buckets = [(str(bound), sum(v for size, v in exact.items() if size <= bound))
                       for bound in BATCH_SIZE_BUCKETS]
            buckets.append(("+Inf", sum(exact.values())))
            sizes.add_metric([model_id], buckets, data.get("items", 0))
            tokens.add_metric([model_id], data.get("tokens", 0))
            padded.add_metric([model_id], data.get("padded_tokens", 0))
            ratio = batchstats.padding_ratio(data)
            if ratio is not None:
                padding.add_metric([model_id], ratio)
            for family, name in ((queued, batchstats.QUEUE_SECONDS), (inference, batchstats.INFERENCE_SECONDS)):
                buckets, total, _count = batchstats.histogram(data, name)
                family.add_metric([model_id], buckets, total)
            for error_type, count in sorted(batchstats.failures(data).items()):
                failed.add_metric([model_id, error_type], count)
            redelivered.add_metric([model_id], data.get("redelivered", 0))
        yield from (batches, items, seconds, sizes, tokens, padded, padding, queued, inference, failed, redelivered)


def init_app(app: Flask) -> None:
    """Count every request and serve /metrics."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        from webapp.response_cache import CACHE_HITS, CACHE_MISSES, COALESCED

        for collector in (REQUESTS, LATENCY, JOBS, CACHE_HITS, CACHE_MISSES, COALESCED):
            registry.register(collector)
    svc = app.extensions["atf"]
    registry.register(FleetCollector(svc.jobs.results, svc.workers, svc.jobs.publisher))

    @app.after_request
    def _count(response):
        rule, started = accesslog.route(), accesslog.request_started()
        REQUESTS.labels(request.method, rule, str(response.status_code)).inc()
        LATENCY.labels(rule).observe(time.perf_counter() - started if started is not None else 0.0)
        return response

    @app.get("/metrics")
    def metrics():
        """Prometheus metrics of the API and the workers' batching."""
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
