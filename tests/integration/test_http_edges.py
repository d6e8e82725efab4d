"""Slow and odd clients against the real gunicorn webapp: every answer is JSON, and none holds a thread.

A webapp of its own, small on purpose (one process, 4 threads, BODY_TIMEOUT_S=2,
MAX_BODY_BYTES=2048), so a handful of stalled clients is more than its threads.
"""

from __future__ import annotations

import json
import re
import socket
import time
from concurrent import futures

import pytest
import requests

from tests.helpers import Webapp, service_env

BODY_TIMEOUT_S = 2.0
THREADS = 4


@pytest.fixture(scope="module")
def small_webapp(redis_url, model_dir, log_dir):
    env = service_env(redis_url, model_dir, body_timeout_s=BODY_TIMEOUT_S, max_body_bytes=2048)
    app = Webapp(env, log_dir, "--workers", "1", "--threads", str(THREADS)).wait_ready()
    yield app
    app.stop()


def connect(app: Webapp) -> socket.socket:
    return socket.create_connection(("127.0.0.1", app.port), timeout=30)


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one HTTP/1.1 answer read off a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a full answer: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def raw_request(app: Webapp, data: bytes) -> tuple[int, dict, dict]:
    with connect(app) as sock:
        sock.sendall(data)
        status, headers, body = read_response(sock)
    assert headers["content-type"].startswith("application/json"), (status, headers, body)
    return status, headers, json.loads(body)


def assert_error_shape(body: dict, type_: str) -> None:
    assert body["error"]["type"] == type_ and body["error"]["message"], body


def test_a_body_shorter_than_its_content_length_is_408_within_the_bound(small_webapp):
    """Clients that stall mid-body get 408 JSON within BODY_TIMEOUT_S, and others are still answered."""
    head = (b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n")
    stalled = []
    started = time.monotonic()
    for _ in range(THREADS + 2):  # more stalled clients than the webapp has threads
        sock = connect(small_webapp)
        sock.sendall(head + b'{"model_id"')  # 10 bytes of the 1000 promised, then nothing
        stalled.append(sock)

    def answer(sock):
        with sock:
            status, headers, body = read_response(sock)
            elapsed = time.monotonic() - started
            sock.settimeout(5)
            assert sock.recv(1) == b"", "the connection stays open after the 408"
            return status, headers, json.loads(body), elapsed

    with futures.ThreadPoolExecutor(len(stalled) + 1) as pool:
        answers = [pool.submit(answer, sock) for sock in stalled]
        other = pool.submit(lambda: (requests.get(small_webapp.url + "/openapi.json", timeout=30),
                                     time.monotonic() - started))
        for future in answers:
            status, headers, body, elapsed = future.result(timeout=60)
            assert status == 408 and headers["content-type"].startswith("application/json"), (status, body)
            assert_error_shape(body, "request_timeout")
            # the two that waited for a thread get theirs one timeout later
            assert elapsed < 2 * BODY_TIMEOUT_S + 3, elapsed
        response, elapsed = other.result(timeout=60)
    assert response.status_code == 200 and elapsed < 2 * BODY_TIMEOUT_S + 3, elapsed
    # the threads are free again: an ordinary request answers at once
    quick = time.monotonic()
    assert requests.get(small_webapp.url + "/openapi.json", timeout=30).status_code == 200
    assert time.monotonic() - quick < 1.0


def test_a_trickling_body_is_cut_off_at_the_bound(small_webapp):
    """A client that sends a byte every 0.2 s never lets a read time out; it still gets 408 in time."""
    started = time.monotonic()
    with connect(small_webapp) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n")
        sock.settimeout(0.2)
        data = b""
        for _ in range(200):
            try:
                chunk = sock.recv(65536)  # the answer, if it came
            except socket.timeout:
                sock.send(b" ")  # one more byte of the body, 0.2 s after the last
                continue
            data += chunk
            if not chunk or b"\r\n\r\n" in data:
                break
        elapsed = time.monotonic() - started
        sock.settimeout(10)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    assert head.startswith(b"HTTP/1.1 408"), data[:200]
    assert_error_shape(json.loads(body), "request_timeout")
    assert elapsed < BODY_TIMEOUT_S + 2, elapsed


def test_request_line_too_long_is_414_json(small_webapp):
    status, _, body = raw_request(small_webapp, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: test\r\n\r\n")
    assert status == 414
    assert_error_shape(body, "uri_too_long")


def test_bad_request_line_is_400_json(small_webapp):
    status, _, body = raw_request(small_webapp, b"THIS IS NOT HTTP\r\n\r\n")
    assert status == 400
    assert_error_shape(body, "bad_request")


def test_header_fields_too_large_are_431_json(small_webapp):
    big = b"GET /health HTTP/1.1\r\nHost: test\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n"
    status, _, body = raw_request(small_webapp, big)
    assert status == 431
    assert_error_shape(body, "header_fields_too_large")
    many = b"GET /health HTTP/1.1\r\nHost: test\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n"
    status, _, body = raw_request(small_webapp, many)
    assert status == 431
    assert_error_shape(body, "header_fields_too_large")


def test_options_is_json_with_allow(small_webapp):
    response = requests.options(small_webapp.url + "/predict", timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/json")
    assert set(response.json()["allow"]) == {"OPTIONS", "POST"}
    assert "POST" in response.headers["Allow"]


def test_chunked_body_over_the_limit_is_413(small_webapp):
    body = json.dumps({"model_id": "minilm", "inputs": "x" * 5000}).encode()
    response = requests.post(small_webapp.url + "/predict", data=iter([body[:1000], body[1000:]]),
                             headers={"Content-Type": "application/json"}, timeout=30)
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 413, response.text
    assert_error_shape(response.json(), "payload_too_large")


def test_malformed_chunked_body_is_400_json(small_webapp):
    data = (b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
    status, _, body = raw_request(small_webapp, data)
    assert status == 400
    assert_error_shape(body, "bad_request")
