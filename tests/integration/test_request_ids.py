"""Request ids and trace context through real processes, and the log lines that name a job.

A webapp (gunicorn, two worker processes) and a Celery worker started
with LOG_FORMAT=json write nothing but JSON lines; the request id a client
sends is on the webapp's access line, in the job's record, and on the
worker's batch line for that job. The session's services (LOG_FORMAT
unset: text) show the same ids in their text lines.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
import requests

from tests.helpers import PYTHON, ROOT, SENTENCES, Webapp, Worker, service_env, wait_for_status

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
MODEL = "minilm-jsonlog"  # a model id of its own (an alias, tests/conftest.py): no other worker takes these jobs
UNCACHED = {"use_cache": False}  # computed by the worker: the cache may hold minilm's answer (same weights)
GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def json_services(redis_url, model_dir, tmp_path_factory):
    """A worker serving minilm-jsonlog and a webapp, both with LOG_FORMAT=json, logging into their own folder."""
    logs = tmp_path_factory.mktemp("json-logs")
    worker = Worker("jsonlog", service_env(redis_url, model_dir, preload_models=MODEL, log_format="json"),
                    logs).wait_ready()
    webapp = Webapp(service_env(redis_url, model_dir, log_format="json"), logs,
                    "--workers", "2", "--threads", "8").wait_ready()
    yield worker, webapp
    webapp.stop()
    worker.stop()


def json_lines(path) -> list[dict]:
    """Every line of a log file, each parsed as JSON (an AssertionError names the first that is not)."""
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"{path.name} line {number} is not JSON: {line!r}") from None
        assert isinstance(record, dict) and {"ts", "level", "logger", "msg"} <= set(record), line
        records.append(record)
    return records


def wait_for_line(path, predicate, parse, timeout: float = 30.0):
    """The first line of the log at `path` that `predicate` accepts, once it is written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in parse(path) if predicate(line)]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no such line in {path.name}:\n{path.read_text()[-3000:]}")


def text_lines(path) -> list[str]:
    return path.read_text().splitlines()


def test_json_logs_carry_the_request_id_from_webapp_to_worker(json_services):
    """One /jobs request: the id comes back, is kept with the job, and is on both processes' lines about it."""
    worker, webapp = json_services
    request_id = "client-7 json"
    body = {"model_id": MODEL, "inputs": SENTENCES[0], "options": UNCACHED}
    response = requests.post(f"{webapp.url}/jobs", json=body,
                             headers={"X-Request-Id": request_id, "traceparent": TRACEPARENT}, timeout=30)
    assert response.status_code == 202 and response.headers["X-Request-Id"] == request_id
    job_id = response.json()["job_id"]

    class Api:
        def get(self, path):
            return requests.get(webapp.url + path, timeout=30)

    job = wait_for_status(Api(), job_id, {"succeeded", "failed"})
    assert job["status"] == "succeeded" and job["request_id"] == request_id

    access = wait_for_line(webapp.log_path, lambda r: r["logger"] == "webapp.access" and r.get("job_id") == job_id
                           and r["route"] == "/jobs", json_lines)
    assert (access["level"], access["request_id"], access["method"], access["status"], access["model_id"]) == (
        "INFO", request_id, "POST", 202, MODEL)
    assert access["duration_ms"] >= 0
    batch = wait_for_line(worker.log_path, lambda r: job_id in r.get("job_ids", ()), json_lines)
    assert batch["level"] == "INFO" and request_id in batch["request_ids"]
    assert (batch["model_id"], batch["worker"]) == (MODEL, worker.name) and batch["batch_size"] >= 1
    assert batch["forward_ms"] >= 0 and batch["padded_tokens"] >= batch["tokens"] > 0
    # Every line of both logs is JSON: gunicorn's own, the app's, Celery's.
    webapp_loggers = {r["logger"] for r in json_lines(webapp.log_path)}
    assert {"gunicorn.error", "webapp.access"} <= webapp_loggers
    assert any(r["logger"].startswith("celery") for r in json_lines(worker.log_path))
    # Ids only: the job's text is on no line.
    assert SENTENCES[0] not in webapp.log_path.read_text() + worker.log_path.read_text()


def test_bad_request_ids_are_replaced_and_every_answer_echoes_one(json_services):
    """Too long or non-printable ids are replaced, a missing one generated; 404 and 415 echo it too."""
    _, webapp = json_services
    url = webapp.url
    assert requests.get(f"{url}/no/such/path", headers={"X-Request-Id": "mine-404"},
                        timeout=10).headers["X-Request-Id"] == "mine-404"
    refused = requests.post(f"{url}/jobs", data="text", headers={"Content-Type": "text/plain",
                                                                   "X-Request-Id": "mine-415"}, timeout=10)
    assert refused.status_code == 415 and refused.headers["X-Request-Id"] == "mine-415"
    for bad in ("x" * 129, "bad\x7fid", "tab\tinside"):
        made = requests.get(f"{url}/health", headers={"X-Request-Id": bad}, timeout=10).headers["X-Request-Id"]
        assert GENERATED.fullmatch(made), (bad, made)
    first = requests.get(f"{url}/no/such/path", timeout=10).headers["X-Request-Id"]
    second = requests.get(f"{url}/no/such/path", timeout=10).headers["X-Request-Id"]
    assert GENERATED.fullmatch(first) and GENERATED.fullmatch(second) and first != second
    # gunicorn answers a request it cannot parse itself (431): with an id too.
    too_large = requests.get(f"{url}/health", headers={"X-Big": "x" * 10_000}, timeout=10)
    assert too_large.status_code == 431 and GENERATED.fullmatch(too_large.headers["X-Request-Id"])
    # A malformed traceparent is dropped, the job still runs.
    response = requests.post(f"{url}/jobs", json={"model_id": MODEL, "inputs": SENTENCES[1], "options": UNCACHED},
                             headers={"X-Request-Id": "tp-bad", "traceparent": "00-nothex-01"}, timeout=30)
    assert response.status_code == 202


def test_text_logs_show_the_ids_on_the_access_and_batch_lines(api, webapp, worker):
    """The session's services log text (the default): the same ids, as `[… job=… req=…]`."""
    request_id = "client-8-text"
    response = api.post("/jobs", json={"model_id": "minilm", "inputs": SENTENCES[2]},
                        headers={"X-Request-Id": request_id})
    assert response.headers["X-Request-Id"] == request_id
    job_id = response.json()["job_id"]
    assert wait_for_status(api, job_id, {"succeeded"})["request_id"] == request_id
    access = wait_for_line(webapp.log_path, lambda line: "webapp.access" in line and f"job={job_id}" in line,
                           text_lines)
    assert "POST /jobs 202 " in access and f"req={request_id}" in access and "model=minilm" in access
    batch = wait_for_line(worker.log_path, lambda line: "batch: minilm," in line and job_id in line, text_lines)
    assert "INFO/MainProcess" in batch and request_id in batch and "model=minilm" in batch


@pytest.mark.parametrize("command", [["-m", "gunicorn", "webapp:create_app()", "--bind", "127.0.0.1:0"],
                                     ["-m", "celery", "-A", "tasks", "worker", "-n", "badlog@test"]])
def test_an_unknown_log_format_stops_the_start(redis_url, tmp_path, command):
    """LOG_FORMAT=xml: the webapp and the worker exit at once with status 2, naming the variable."""
    env = service_env(redis_url, tmp_path, log_format="xml")
    out = subprocess.run([PYTHON, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "bad setting: LOG_FORMAT must be one of text, json, got 'xml'" in out.stderr
