"""Reading a request body: bounded in size (413) and in time (408), however it is framed.

Werkzeug's own reading is not enough under gunicorn: a chunked body is cut
silently at MAX_CONTENT_LENGTH (the JSON then fails to parse: a 400 for what
is a 413), and a client that sends less than its Content-Length holds the
thread until gunicorn's worker timeout. So the body is read here, from the
WSGI input itself, under a deadline of BODY_TIMEOUT_S:

- the client socket (gunicorn puts it in the environ) times out at the
  deadline, which ends a client that stops sending;
- a client that keeps trickling a byte now and then never lets one read time
  out, so a watchdog thread shuts the socket's reading side at the deadline.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field

from flask import current_app, request

from common.errors import MalformedRequest, PayloadTooLarge, RequestTimeout, ServiceError

# Read in steps so that the deadline is checked between them and the
# socket's timeout is the time left, not BODY_TIMEOUT_S afresh each time.
READ_STEP = 64 * 1024
# How often the watchdog looks for bodies past their deadline: a trickling
# client is cut off at most this late.
WATCHDOG_TICK_S = 0.25


def read_body() -> bytes:
    """The request body; 413 past MAX_BODY_BYTES, 408 when it takes longer than BODY_TIMEOUT_S."""
    settings = current_app.config["SETTINGS"]
    limit = settings.max_body_bytes
    environ = request.environ
    length = request.content_length
    if length is not None:
        if length > limit:
            raise _too_large(limit)
        want = length
    elif environ.get("wsgi.input_terminated"):
        want = None  # chunked: read to its end, refusing past the limit
    else:
        return b""  # no length and a server that does not end the input: nothing can be read safely
    # The client socket is this request's alone only in HTTP/1 (an HTTP/2 connection carries many).
    sock = environ.get("gunicorn.socket") if environ.get("SERVER_PROTOCOL", "").startswith("HTTP/1") else None
    deadline = time.monotonic() + settings.body_timeout_s
    timed_out = _timed_out(settings.body_timeout_s)
    watch = WATCHDOG.watch(sock, deadline) if sock is not None else None
    previous_timeout = sock.gettimeout() if sock is not None else None
    try:
        chunks, received = _read(environ["wsgi.input"], want, limit, sock, deadline)
    except TimeoutError:
        raise timed_out from None
    except ServiceError:
        raise
    except Exception as exc:
        if watch is not None and watch.cut:
            raise timed_out from None
        if isinstance(exc, OSError) or type(exc).__module__.startswith("gunicorn."):
            # a malformed chunk, a body cut short, a connection gone
            raise MalformedRequest("the request body is malformed or incomplete") from None
        raise
    finally:
        if watch is not None:
            WATCHDOG.release(watch)
        if sock is not None:
            try:
                sock.settimeout(previous_timeout)
            except OSError:
                pass
    if watch is not None and watch.cut:
        raise timed_out
    if want is not None and received < want:
        raise MalformedRequest(f"the body ended after {received} of its {want} bytes (Content-Length)")
    return b"".join(chunks)


def _read(stream, want: int | None, limit: int, sock, deadline: float) -> tuple[list[bytes], int]:
    chunks: list[bytes] = []
    received = 0
    while want is None or received < want:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        if sock is not None:
            sock.settimeout(left)
        chunk = stream.read(min(READ_STEP, limit + 1 - received) if want is None
                            else min(READ_STEP, want - received))
        if not chunk:
            break
        received += len(chunk)
        if received > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return chunks, received


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than {limit} bytes (MAX_BODY_BYTES)")


def _timed_out(timeout_s: float) -> RequestTimeout:
    return RequestTimeout(f"the request body was not received within {timeout_s:g} s (BODY_TIMEOUT_S)")


@dataclass(eq=False)
class Watch:
    """One body being read: its socket, its deadline, and whether the watchdog cut it off."""

    sock: socket.socket
    deadline: float
    cut: bool = field(default=False)


class BodyWatchdog:
    """Shuts the reading side of sockets whose body is still being read past its deadline.

    One thread per process, started on first use; it holds no socket longer
    than its read (release() removes it under the lock the thread cuts under).
    """

    def __init__(self, tick_s: float = WATCHDOG_TICK_S):
        self._tick_s = tick_s
        self._lock = threading.Lock()
        self._watched: set[Watch] = set()
        self._pid: int | None = None  # the process whose thread runs (gunicorn forks)

    def watch(self, sock: socket.socket, deadline: float) -> Watch:
        entry = Watch(sock, deadline)
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="body-watchdog", daemon=True).start()
            self._watched.add(entry)
        return entry

    def release(self, entry: Watch) -> None:
        with self._lock:
            self._watched.discard(entry)

    def _run(self) -> None:
        while True:
            time.sleep(self._tick_s)
            now = time.monotonic()
            with self._lock:
                for entry in [e for e in self._watched if e.deadline <= now]:
                    self._watched.discard(entry)
                    entry.cut = True
                    try:
                        entry.sock.shutdown(socket.SHUT_RD)  # the blocked read returns: end of input
                    except OSError:
                        pass


WATCHDOG = BodyWatchdog()
