"""Odd requests answered in JSON: OPTIONS, chunked bodies, gunicorn's own errors, the document's rules.

What only a real gunicorn shows (a body that never arrives, a request line
over its limit) is tested in tests/integration/test_http_edges.py.
"""

import io
import json
import socket
import threading
import time

import pytest
from gunicorn.http import errors as http_errors

from tests.helpers import assert_error, make_client
from webapp.body import BodyWatchdog
from webapp.gunicorn_worker import error_for


def chunked_post(client, path, body: bytes):
    """A POST with no Content-Length whose input the server marks as terminated, as gunicorn does for chunked."""
    return client.post(path, input_stream=io.BytesIO(body), headers={"Transfer-Encoding": "chunked",
                                                                     "Content-Type": "application/json"},
                       environ_overrides={"wsgi.input_terminated": True})


def test_options_answers_json_with_allow(model_dir):  # noqa: F811
    response = make_client(model_dir).options("/predict")
    assert response.status_code == 200 and response.is_json
    assert set(response.get_json()["allow"]) == {"POST", "OPTIONS"}
    assert set(response.headers["Allow"].replace(" ", "").split(",")) == {"POST", "OPTIONS"}
    assert_error(make_client(model_dir).options("/nowhere"), 404, "not_found")


def test_chunked_body_over_the_limit_is_413(model_dir):  # noqa: F811
    """A body without Content-Length is refused by size as one with it is (not cut, then failed as JSON)."""
    body = json.dumps({"model_id": "minilm", "inputs": "x" * 5000}).encode()
    assert_error(chunked_post(make_client(model_dir), "/predict", body), 413, "payload_too_large")
    assert_error(chunked_post(make_client(model_dir), "/models/load", body), 413, "payload_too_large")


def test_chunked_body_within_the_limit_is_read(model_dir):  # noqa: F811
    client = make_client(model_dir, workers=[])
    body = json.dumps({"model_id": "minilm", "inputs": "x"}).encode()
    assert_error(chunked_post(client, "/predict", body), 503, "no_workers")  # read and validated


def test_unloading_an_unknown_model_is_404(model_dir):  # noqa: F811
    client = make_client(model_dir, workers=[{"name": "w", "models": {"gone-from-disk": {}}}])
    assert_error(client.post("/models/unload", json={"model_id": "ghost"}), 404, "model_not_found")
    # a model still loaded on a worker, its directory since removed, can be unloaded: past the 404
    response = client.post("/models/unload", json={"model_id": "gone-from-disk", "wait": 0})
    assert response.status_code != 404, response.get_json()


def test_empty_admin_body_is_400(model_dir):  # noqa: F811
    response = make_client(model_dir).post("/models/unload", data=b"", content_type="application/json")
    assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize("exc, status, type_", [
    (http_errors.LimitRequestLine(9000, 4094), 414, "uri_too_long"),
    (http_errors.LimitRequestHeaders("limit request headers fields"), 431, "header_fields_too_large"),
    (http_errors.InvalidRequestLine("GARBAGE"), 400, "bad_request"),
    (http_errors.InvalidHeaderName("x y"), 400, "bad_request"),
    (http_errors.InvalidChunkSize(b"zz"), 400, "bad_request"),
    (http_errors.UnsupportedTransferCoding("gzip"), 501, "not_implemented"),
    (http_errors.ExpectationFailed("202-accepted"), 417, "expectation_failed"),
])
def test_gunicorn_parser_errors_map_to_the_error_shape(exc, status, type_):
    error = error_for(exc)
    assert error.status_code == status and error.to_dict()["error"]["type"] == type_


def test_an_unexpected_server_error_says_nothing_of_it():
    error = error_for(KeyError("the secret internals"))
    assert error.status_code == 500 and "secret" not in error.message


def _walk(node, path=""):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}/{i}")


def test_openapi_document_keeps_to_openapi_3_0(model_dir):  # noqa: F811
    """3.0 schemas: exclusiveMinimum/Maximum are booleans, nullable instead of type lists."""
    doc = make_client(model_dir).get("/openapi.json").get_json()
    assert doc["openapi"] == "3.0.3"
    for path, node in _walk(doc):
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            if key in node:
                assert isinstance(node[key], bool), f"{path}: {key} must be a boolean in OpenAPI 3.0"
        if isinstance(node.get("type"), list):
            raise AssertionError(f"{path}: a list of types is OpenAPI 3.1")


def test_openapi_document_says_what_the_api_refuses(model_dir):  # noqa: F811
    doc = make_client(model_dir).get("/openapi.json").get_json()
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["not"] == {"required": ["inputs", "text"]}  # one of inputs and its alias text, not both
    for op in ("load", "unload", "switch"):
        post = doc["paths"][f"/models/{op}"]["post"]
        schema = post["requestBody"]["content"]["application/json"]["schema"]
        assert schema["properties"]["model_id"]["pattern"].startswith("^[A-Za-z0-9]")
        assert {"400", "404", "413", "422"} <= set(post["responses"]), op
    switch = doc["paths"]["/models/switch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "workers" not in switch["properties"]  # the API refuses it: a switch goes to every worker with the model
    load = doc["paths"]["/models/load"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"feature_extraction", "ner", None} <= set(load["properties"]["model_type"]["enum"])


def test_the_watchdog_cuts_off_a_trickling_body():
    """A client sending a byte now and then never lets a read time out; the watchdog ends it at the deadline."""
    server, client = socket.socketpair()
    watchdog = BodyWatchdog(tick_s=0.05)
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            try:
                client.send(b"x")
            except OSError:
                return
            time.sleep(0.05)

    threading.Thread(target=trickle, daemon=True).start()
    started = time.monotonic()
    watch = watchdog.watch(server, started + 0.5)
    received = 0
    try:
        while server.recv(1):  # ends when the watchdog shuts the reading side
            received += 1
            assert time.monotonic() - started < 5, "never cut off"
    finally:
        stop.set()
        watchdog.release(watch)
        server.close()
        client.close()
    assert watch.cut and received > 0
    assert 0.5 <= time.monotonic() - started < 2


def test_the_watchdog_leaves_a_released_body_alone():
    server, client = socket.socketpair()
    watchdog = BodyWatchdog(tick_s=0.02)
    watch = watchdog.watch(server, time.monotonic() + 0.05)
    watchdog.release(watch)
    time.sleep(0.2)
    client.send(b"still open")
    assert server.recv(100) == b"still open" and not watch.cut
    server.close()
    client.close()


def test_a_503_names_what_is_down_not_the_library_error(model_dir):  # noqa: F811
    """Redis down: the client learns which part is unreachable; the exception's text is only logged."""
    client = make_client(model_dir)
    for response in (client.post("/predict", json={"model_id": "minilm", "inputs": "x"}), client.get("/jobs/abc")):
        assert_error(response, 503, "broker_unavailable")
        message = response.get_json()["error"]["message"]
        assert "127.0.0.1" not in message and "Error" not in message, message
