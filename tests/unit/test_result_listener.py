"""The webapp's result listener when its subscription goes silent.

A link cut without a reset, or a NAT or firewall that forgot the
connection, leaves the listener's socket open with nothing arriving: every
reply published meanwhile is lost to it, and the requests waiting would
only be answered by their once-a-second re-read of the result store. The
listener pings after HEALTH_CHECK_S of silence and drops a connection that
does not answer, so it subscribes again. Here a TCP proxy in front of the
real Redis (127.0.0.1:6379, database 15) stops forwarding on the
connections it holds, closing nothing; a failure when CI is set and no
Redis runs.
"""

import socket
import threading
import time
import uuid
from urllib.parse import urlsplit

import orjson

from tests.unit.conftest import REDIS_URL
from webapp import results
from webapp.results import ResultListener

REDIS = urlsplit(REDIS_URL)


class SilencingProxy:
    """Forwards TCP connections to Redis; `silence()` makes those open now drop whatever they carry."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections: list[dict] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection((REDIS.hostname, REDIS.port))
            state = {"silent": False, "sockets": (client, upstream)}
            with self.lock:
                self.connections.append(state)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst, state), daemon=True).start()

    @staticmethod
    def _pipe(src, dst, state):
        while True:
            try:
                data = src.recv(65536)
                if not data:
                    break
                if not state["silent"]:  # a cut link: what is sent is lost, nothing is closed
                    dst.sendall(data)
            except OSError:
                break
        for sock in state["sockets"]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def silence(self) -> int:
        with self.lock:
            for state in self.connections:
                state["silent"] = True
            return len(self.connections)

    def close(self):
        self.server.close()
        with self.lock:
            for state in self.connections:
                for sock in state["sockets"]:
                    sock.close()


def test_a_listener_whose_subscription_goes_silent_subscribes_again(client, monkeypatch):
    """Published replies reach their waiter again within a few health checks of the link going silent."""
    monkeypatch.setattr(results, "HEALTH_CHECK_S", 0.5)
    proxy = SilencingProxy()
    listener = ResultListener(f"redis://127.0.0.1:{proxy.port}{REDIS.path}")
    try:
        assert listener.ensure_started()
        assert proxy.silence() == 1  # the subscription's connection
        job_id = uuid.uuid4().hex
        waiter = listener.register(job_id)
        reply = orjson.dumps({"task_id": job_id, "status": "SUCCESS", "result": 1})
        silenced_at = time.monotonic()
        while not waiter.event.wait(0.2) and time.monotonic() - silenced_at < 10:
            client.publish(listener.channel, reply)  # lost while the old connection is the one subscribed
        assert waiter.event.is_set(), "no reply reached the waiter within 10 s of the subscription going silent"
        assert waiter.payload == {"task_id": job_id, "status": "SUCCESS", "result": 1}
        took = time.monotonic() - silenced_at
        print(f"subscribed again and delivered {took:.1f} s after the link went silent (health check every 0.5 s)")
        assert len(proxy.connections) >= 2  # a new connection, not the old one waking up
    finally:
        listener.stop()
        proxy.close()
