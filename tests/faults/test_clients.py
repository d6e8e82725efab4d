"""Client and webapp faults: a job outlives the connection, and the webapp process, that asked for it."""

from __future__ import annotations

import json
import socket
import threading
import time
from urllib.parse import urlparse

import requests

from common import protocol
from tests.helpers import LONG, bodies, ready, wait_until


def job_ids(client) -> set[str]:
    return {key.decode()[len(protocol.JOB_KEY_PREFIX):] for key in client.scan_iter(protocol.JOB_KEY_PREFIX + "*")}


def post_and_hang_up(url: str, body: dict, after_s: float) -> None:
    """Send POST /predict on a raw socket and close it `after_s` later, before any answer."""
    target = urlparse(url)
    payload = json.dumps(body).encode()
    with socket.create_connection((target.hostname, target.port)) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        time.sleep(after_s)


def test_a_client_that_hangs_up_leaves_a_job_that_completes(cluster, report):
    """/predict, then the client disconnects while it waits: the job still runs and can be polled."""
    c = cluster()
    worker, app = ready(c.worker("w1", preload_models="minilm"), c.webapp())
    ledger = c.ledger(app)
    before = job_ids(c.redis)
    t0 = time.monotonic()
    for i in range(5):
        post_and_hang_up(app.url, {"model_id": "minilm", "inputs": LONG[i * 16:(i + 1) * 16],
                                   "options": {"wait": 30, "use_cache": False}}, after_s=0.2)
    # Each request's job is recorded by the webapp on its own schedule: the last may come after the hang-up.
    wait_until(lambda: len(job_ids(c.redis) - before) == 5, timeout=10)
    for job_id in job_ids(c.redis) - before:
        ledger.accepted[job_id] = t0
    outcome = ledger.wait(timeout=60, since=t0)
    polled = [requests.get(f"{app.url}/jobs/{j}", timeout=10).json()["status"] for j in ledger.accepted]
    report(fault="client disconnects from /predict while it waits (5 requests)", broker="redis", outcome=outcome,
           note="every job ran and is pollable with GET /jobs/<id>")
    assert outcome.accepted == 5 and outcome.succeeded == 5 and polled == ["succeeded"] * 5


def test_a_killed_webapp_leaves_jobs_that_complete_and_are_pollable_elsewhere(cluster, report):
    """kill -9 of a whole webapp while 20 /predict requests wait on it: another webapp serves their results."""
    c = cluster()
    worker, doomed, other = ready(c.worker("w1", preload_models="minilm"), c.webapp(), c.webapp())
    ledger = c.ledger(other)
    before = job_ids(c.redis)
    ledger.submit({"model_id": "minilm", "inputs": LONG[:96], "options": {"use_cache": False}})  # keeps it busy

    def wait_on_doomed(body):
        try:
            requests.post(f"{doomed.url}/predict", json=body, timeout=60)
        except requests.ConnectionError:
            pass  # the webapp it waited on is gone: that is the fault

    waiting = [threading.Thread(target=wait_on_doomed, args=(b,), daemon=True) for b in bodies(20)]
    for t in waiting:
        t.start()
    deadline = time.monotonic() + 20
    while len(job_ids(c.redis) - before) < 21 and time.monotonic() < deadline:
        time.sleep(0.05)  # every request has published its job and waits
    t0 = time.monotonic()
    doomed.kill()
    for job_id in job_ids(c.redis) - before:
        ledger.accepted.setdefault(job_id, t0)
    outcome = ledger.wait(timeout=90, since=t0)
    polled = [requests.get(f"{other.url}/jobs/{j}", timeout=10).json()["status"] for j in ledger.accepted]
    report(fault="webapp kill -9 (gunicorn and its workers) while 20 /predict requests wait", broker="redis",
           outcome=outcome, note="their jobs completed and are pollable from the other webapp")
    assert outcome.accepted == 21 and outcome.succeeded == 21 and outcome.lost == 0
    assert set(polled) == {"succeeded"}
