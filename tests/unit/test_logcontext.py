"""The ids on log lines: bound per request or job, written as text or JSON, kept on escaping errors."""

import io
import json
import logging

import pytest
from flask import request
from kombu import Connection
from werkzeug.test import EnvironBuilder

from common import logcontext
from tests.helpers import make_client


@pytest.fixture
def lines():
    """A handler prepared as the services prepare theirs (JSON), on the root logger; yields its lines."""
    stream = io.StringIO()
    handler = logcontext.prepare(logging.StreamHandler(stream), "json")
    root = logging.getLogger()
    root.addHandler(handler)
    before = root.level
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(before)


def test_bound_ids_reach_every_logger_and_extra_wins(lines):
    log = logging.getLogger("any.library")
    with logcontext.bound(job_id="j1", request_id="r1", model_id=None):
        log.info("inside")
        log.info("explicit", extra={"job_id": "j2"})
    log.info("outside")
    inside, explicit, outside = lines()
    assert (inside["job_id"], inside["request_id"], inside["msg"], inside["logger"]) == ("j1", "r1", "inside",
                                                                                        "any.library")
    assert "model_id" not in inside and explicit["job_id"] == "j2"
    assert "job_id" not in outside and {"ts", "level"} <= set(outside)


def test_a_traceback_logged_outside_the_block_still_names_the_job(lines):
    """Celery's "Unrecoverable error" is logged by Celery, after the job's block was left."""
    try:
        with logcontext.bound(job_id="j-crash", request_id="r-crash"):
            raise RuntimeError("boom")
    except RuntimeError as exc:
        logging.getLogger("celery.worker.worker").critical("Unrecoverable error: %r", exc, exc_info=True)
    (line,) = lines()
    assert (line["job_id"], line["request_id"], line["level"]) == ("j-crash", "r-crash", "CRITICAL")
    assert "RuntimeError" in line["exc_info"]


def test_kombus_requeuing_line_names_the_message_job(lines):
    """kombu's own warning about a message for a queue nobody consumes names its job and request."""
    with Connection("memory://") as conn:
        channel = conn.default_channel
        message = channel.prepare_message("{}", headers={"id": "j-requeue", "request_id": "r-requeue"})
        message["properties"].update(delivery_info={"exchange": "", "routing_key": "nobody"}, delivery_tag="t1")
        conn.transport._deliver(message, "nobody")  # what the Redis transport calls per fetched message
    requeuing = [r for r in lines() if r["msg"].startswith("Requeuing undeliverable message")]
    assert requeuing and (requeuing[0]["job_id"], requeuing[0]["request_id"]) == ("j-requeue", "r-requeue")


def test_text_format_appends_the_ids_to_the_usual_line():
    record = logging.LogRecord("tasks.batcher", logging.INFO, __file__, 1, "batch of %d", (2,), None)
    record.__dict__.update(model_id="minilm", job_ids=["a", "b"], request_ids=["r"], worker="w@h")
    text = logcontext.TextFormatter(logging.Formatter("%(levelname)s %(message)s")).format(record)
    assert text == "INFO batch of 2 [model=minilm jobs=a,b reqs=r]"


def test_the_webapps_unhandled_error_names_the_request(tmp_path, lines):
    """The traceback line of an unexpected error carries the request's id (and no exception text)."""
    app = make_client(tmp_path).application

    @app.get("/explode")
    def explode():
        raise ValueError(request.args["text"])

    # buffered: the test client closes the response, as a WSGI server does after sending it
    response = app.test_client().get("/explode?text=secret+input+text", headers={"X-Request-Id": "req-500"},
                                     buffered=True)
    assert response.status_code == 500 and response.headers["X-Request-Id"] == "req-500"
    records = lines()
    error = next(r for r in records if r["logger"] == "webapp.errors")
    assert error["request_id"] == "req-500" and "secret input text" not in json.dumps(records)
    access = next(r for r in records if r["logger"] == "webapp.access")
    assert (access["status"], access["route"], access["request_id"]) == (500, "/explode", "req-500")


def served(app, path: str, request_id: str, **environ) -> tuple[list[str], object]:
    """Call the app as a WSGI server does: (the statuses it started, the answer's iterable, not closed yet)."""
    statuses = []
    env = EnvironBuilder(path=path, headers={"X-Request-Id": request_id}).get_environ()
    answer = app({**env, **environ}, lambda status, headers, exc_info=None: statuses.append(status))
    return statuses, answer


def test_the_access_line_is_written_when_the_server_closes_the_answer(tmp_path, lines):
    """The client has its answer before the line is written; the line still has the request's ids and the view's."""
    app = make_client(tmp_path).application

    @app.get("/hello")
    def hello():
        logcontext.bind(model_id="m1")  # as /predict binds the model it asked for
        return {"hello": "world"}

    statuses, answer = served(app, "/hello", "req-close")
    body = b"".join(answer)  # what a server sends
    assert statuses == ["200 OK"] and json.loads(body) == {"hello": "world"}
    assert not [r for r in lines() if r["logger"] == "webapp.access"]
    answer.close()  # the server is done with the response (PEP 3333)
    (access,) = [r for r in lines() if r["logger"] == "webapp.access"]
    assert (access["method"], access["route"], access["status"], access["request_id"], access["model_id"]) == (
        "GET", "/hello", 200, "req-close", "m1")
    assert access["duration_ms"] >= 0


def test_a_file_passed_through_to_the_server_has_its_access_line(tmp_path, lines):
    """Swagger UI's files go out as files (the server closes the file, not the response): logged all the same."""
    app = make_client(tmp_path).application
    file_wrapper = lambda f, size=8192: iter(lambda: f.read(size), b"")  # noqa: E731 - as gunicorn's, no close
    statuses, answer = served(app, "/docs/static/swagger-ui.css", "req-file", **{"wsgi.file_wrapper": file_wrapper})
    assert statuses == ["200 OK"] and b"swagger" in b"".join(answer)
    (access,) = [r for r in lines() if r["logger"] == "webapp.access"]
    assert (access["route"], access["status"], access["request_id"]) == ("/docs/static/<path:filename>", 200,
                                                                         "req-file")


def test_metrics_count_a_request_under_its_access_lines_route_and_clock(tmp_path, lines):
    """/metrics labels a request with its access line's route ("unmatched", never the path), timed from its start."""
    from prometheus_client.parser import text_string_to_metric_families

    client = make_client(tmp_path)

    def samples():
        text = client.get("/metrics", buffered=True).get_data(as_text=True)
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    before = samples()
    assert client.get("/no/such/path", buffered=True).status_code == 404
    after = samples()
    (access,) = [r for r in lines() if r["logger"] == "webapp.access" and r["status"] == 404]
    assert access["route"] == "unmatched"
    counted = ("atf_http_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404")))
    timed = ("atf_http_request_duration_seconds_sum", (("route", "unmatched"),))
    assert after[counted] - before.get(counted, 0) == 1
    observed_ms = 1000 * (after[timed] - before.get(timed, 0))
    # the same start; the metric is taken before the answer is sent, the line after
    assert 0 < observed_ms <= access["duration_ms"] + 0.01
