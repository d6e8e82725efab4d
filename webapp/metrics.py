"""GET /metrics: Prometheus text format.

Under gunicorn each worker process counts its own requests; with
PROMETHEUS_MULTIPROC_DIR set (gunicorn.conf.py sets it) the scrape adds
them up across processes. Batch statistics come from the counters the
workers keep in Redis, so one scrape of the API shows the whole fleet.
"""

from __future__ import annotations

import os
import time

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from common.protocol import BATCH_STATS_PREFIX

REQUESTS = Counter(
    "atf_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
LATENCY = Histogram(
    "atf_http_request_duration_seconds", "Time to answer an HTTP request", ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
JOBS = Counter("atf_jobs_submitted_total", "Jobs published to the workers", ["model_id"])

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class BatchStatsCollector:
    """Reads the per-model batch counters the workers keep in Redis."""

    def __init__(self, client):
        self._redis = client

    def collect(self):
        batches = CounterMetricFamily("atf_batches", "Forward passes run by the workers", labels=["model_id"])
        items = CounterMetricFamily("atf_batch_items", "Items run through forward passes", labels=["model_id"])
        seconds = CounterMetricFamily("atf_batch_forward_seconds", "Time spent in forward passes",
                                      labels=["model_id"])
        sizes = HistogramMetricFamily("atf_batch_size", "Items per forward pass", labels=["model_id"])
        try:
            keys = list(self._redis.scan_iter(match=BATCH_STATS_PREFIX + "*", count=100))
            with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(key)
                stats = pipe.execute()
        except Exception:  # noqa: BLE001 - a scrape must not fail because Redis is down
            return
        for key, raw in zip(keys, stats):
            model_id = key.decode()[len(BATCH_STATS_PREFIX):]
            data = {k.decode(): float(v) for k, v in raw.items()}
            batches.add_metric([model_id], data.get("batches", 0))
            items.add_metric([model_id], data.get("items", 0))
            seconds.add_metric([model_id], data.get("forward_seconds", 0))
            exact = {int(k[5:]): v for k, v in data.items() if k.startswith("size:")}
            buckets, running = [], 0.0
            for bound in BATCH_SIZE_BUCKETS:
                running = sum(v for size, v in exact.items() if size <= bound)
                buckets.append((str(bound), running))
            buckets.append(("+Inf", sum(exact.values())))
            sizes.add_metric([model_id], buckets, data.get("items", 0))
        yield from (batches, items, seconds, sizes)


def init_app(app: Flask) -> None:
    """Count every request and serve /metrics."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        from webapp.cache import CACHE_HITS, CACHE_MISSES, COALESCED

        for collector in (REQUESTS, LATENCY, JOBS, CACHE_HITS, CACHE_MISSES, COALESCED):
            registry.register(collector)
    registry.register(BatchStatsCollector(app.extensions["atf"].jobs.redis))

    @app.before_request
    def _start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def _count(response):
        route = request.url_rule.rule if request.url_rule else "unmatched"
        REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        LATENCY.labels(route).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    @app.get("/metrics")
    def metrics():
        """Prometheus metrics of the API and the workers' batching."""
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
