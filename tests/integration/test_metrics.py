"""/metrics as an operator scrapes it: the fleet's metrics of SPEC §12, and every metric the dashboard queries."""

from __future__ import annotations

import json
import re
import time
import uuid

import redis
import yaml

from common import envelope
from tests.helpers import ROOT, Worker, long_texts, metric_value, scrape_metrics, service_env, wait_for_status

DASHBOARD = ROOT / "deploy" / "grafana" / "atf-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
# Series Prometheus makes itself for every target, not the application's.
PROMETHEUS_SERIES = {"up"}
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                 "offset"}


def queried_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not its functions, label names, strings or ranges)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings (label values, legend text)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges: [5m], [$__rate_interval]
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end():].lstrip()
        if not rest.startswith("(") and match.group() not in _PROMQL_WORDS:
            names.add(match.group())
    return names


def dashboard_metrics() -> set[str]:
    exprs = [t["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for t in panel.get("targets", [])]
    assert exprs
    return set().union(*(queried_metrics(e) for e in exprs))


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def alert_metrics() -> set[str]:
    return set().union(*(queried_metrics(rule["expr"]) for rule in alert_rules())) - PROMETHEUS_SERIES


def poll(api, check, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        metrics = scrape_metrics(api)
        if check(metrics):
            return metrics
        if time.monotonic() > deadline:
            raise AssertionError(f"/metrics never showed the expected state; last: {metrics}")
        time.sleep(0.1)


def push_invalid_job(redis_url: str, model_id: str) -> str:
    """A job message any Celery client could send, which the worker refuses (no inputs): validation_error."""
    job_id = str(uuid.uuid4())
    queue = f"infer.{model_id}"
    redis.Redis.from_url(redis_url).lpush(queue, envelope.write(job_id, queue, {"model_id": model_id}, "", "test"))
    return job_id


def test_queried_metrics_are_parsed_from_promql():
    """The PromQL parsing the dashboard check relies on: names only, histogram series as queried."""
    expr = ('histogram_quantile(0.99, sum by (le, model_id) (rate(atf_job_queue_seconds_bucket{model_id="a b"}[5m])))'
            ' / on (model_id) group_left sum without (worker) (atf_queue_depth) > bool 0')
    assert queried_metrics(expr) == {"atf_job_queue_seconds_bucket", "atf_queue_depth"}


def test_alert_rules_are_complete_and_loaded():
    """Each rule has a name, an expression, a severity and a summary; prometheus.yml and compose load the file."""
    rules = alert_rules()
    assert len(rules) >= 5
    for rule in rules:
        assert rule["alert"].startswith("ATF") and rule["expr"].strip(), rule
        assert rule["labels"]["severity"] in ("critical", "warning") and rule["annotations"]["summary"], rule
    assert "/etc/prometheus/alerts.yml" in yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())[
        "rule_files"]
    mounts = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


def test_every_metric_the_dashboard_queries_is_in_a_live_scrape(api, redis_url):
    """Jobs run (one cached, one the worker refuses): each series a panel or an alert reads is in /metrics,
    histograms as such."""
    text = "the dashboard check"
    for _ in range(2):  # the second is a cache hit
        assert api.post("/predict", json={"model_id": "minilm", "inputs": text}).status_code == 200
    push_invalid_job(redis_url, "minilm")
    metrics = poll(api, lambda m: metric_value(m, "atf_jobs_failed_total", model_id="minilm", type="validation_error"))
    exposed = {name for family in metrics.values() for name, _ in family["samples"]}
    queried = dashboard_metrics()
    assert len(queried) >= 15
    missing = sorted(queried - exposed)
    assert not missing, f"the dashboard queries metrics /metrics does not have: {missing}"
    missing = sorted(alert_metrics() - exposed)
    assert not missing, f"the alert rules read metrics /metrics does not have: {missing}"
    for name in queried:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if base != name and name.endswith("_bucket"):
            assert metrics[base]["type"] == "histogram", name


def test_fleet_metrics_count_the_jobs_run(api, worker, redis_url):
    """One worker up with its memory; 3 jobs add 3 to both job histograms; a refused job counts as a failure."""
    before = scrape_metrics(api)
    assert metric_value(before, "atf_workers_up") == 1  # once, though two gunicorn processes serve the API
    assert metric_value(before, "atf_worker_rss_bytes", worker=worker.name) > 10_000_000
    assert metric_value(before, "atf_worker_gpu_memory_bytes", worker=worker.name) == 0  # a CPU worker
    assert metric_value(before, "atf_model_load_seconds", model_id="minilm", worker=worker.name) > 0
    for text in long_texts(3, words=20):
        assert api.post("/predict", json={"model_id": "minilm", "inputs": text}).status_code == 200
    def failures(metrics):
        return metric_value(metrics, "atf_jobs_failed_total", model_id="minilm", type="validation_error") or 0

    push_invalid_job(redis_url, "minilm")
    after = poll(api, lambda m: failures(m) == failures(before) + 1)

    def grew(name, **labels):
        return (metric_value(after, name, **labels) or 0) - (metric_value(before, name, **labels) or 0)

    assert grew("atf_job_queue_seconds_count", model_id="minilm") == 3
    assert grew("atf_job_inference_seconds_count", model_id="minilm") == 3
    assert grew("atf_job_queue_seconds_bucket", model_id="minilm", le="+Inf") == 3
    assert grew("atf_job_inference_seconds_sum", model_id="minilm") > 0
    assert grew("atf_jobs_failed_total", model_id="minilm", type="validation_error") == 1
    assert grew("atf_jobs_redelivered_total", model_id="minilm") == 0
    assert 0 <= metric_value(after, "atf_batch_padding_ratio", model_id="minilm") < 1
    assert grew("atf_batch_padded_tokens_total", model_id="minilm") >= grew("atf_batch_tokens_total",
                                                                           model_id="minilm") > 0
    assert metric_value(after, "atf_queue_depth", model_id="minilm") == 0


def test_queue_depth_and_jobs_in_flight_while_the_worker_is_busy(api, redis_url, model_dir, log_dir):
    """The only worker of a model runs one long job (it takes one at a time): the 3 sent after it wait in the queue."""
    env = service_env(redis_url, model_dir, preload_models="minilm-b", max_batch_size=1, worker_prefetch=1)
    env["ATF_FAILPOINTS"] = "sleep_on=hold-the-worker:8"
    busy = Worker("metrics-busy", env, log_dir).wait_ready()
    try:
        long_job = api.post("/jobs", json={"model_id": "minilm-b", "inputs": "hold-the-worker"}).json()["job_id"]
        wait_for_status(api, long_job, {"running"})
        waiting = [api.post("/jobs", json={"model_id": "minilm-b", "inputs": text}).json()["job_id"]
                   for text in long_texts(3, words=10)]
        poll(api, lambda m: metric_value(m, "atf_queue_depth", model_id="minilm-b") == 3
             and metric_value(m, "atf_jobs_in_flight", model_id="minilm-b") == 1)
        for job_id in [long_job] + waiting:
            assert wait_for_status(api, job_id, {"succeeded", "failed"})["status"] == "succeeded"
        poll(api, lambda m: metric_value(m, "atf_queue_depth", model_id="minilm-b") == 0
             and metric_value(m, "atf_jobs_in_flight", model_id="minilm-b") == 0)
    finally:
        busy.stop()
