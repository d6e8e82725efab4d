"""gunicorn's gthread worker, answering its own errors in the API's JSON shape.

gunicorn answers a request it cannot parse (a request line over its limit:
414, header fields too large: 431, a malformed request line, header or
chunk: 400) itself, before the app sees it, with an HTML page. This worker
answers the same statuses with `{"error": {"type", "message"}}`.
gunicorn.conf.py selects it (`worker_class`).

It also drains on SIGTERM (gunicorn's graceful stop, which its master
forwards): /health/ready turns 503 "draining" at once, the process keeps
accepting for DRAIN_DELAY_S so a load balancer can take it out of
rotation, then gunicorn stops accepting and finishes the requests it holds
(a /predict waiting for its result included) within graceful_timeout.
The master's own listening socket closes at its SIGTERM, but the worker
processes hold theirs, so the port keeps answering through the delay.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime
from http import HTTPStatus
from ssl import SSLError

from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers.gthread import ThreadWorker

from common.errors import (
    HeaderFieldsTooLarge,
    MalformedRequest,
    NotImplementedByServer,
    ServiceError,
    UriTooLong,
)
from common.requestid import REQUEST_ID_HEADER, new_request_id, valid_request_id
from webapp import drain

# Client text quoted back in a message is cut to this many characters.
MAX_QUOTED_CHARS = 200

# gunicorn's exception -> (error class, status where it differs from the class's), as gunicorn maps them;
# any other exception of its request parser is a 400.
_MAPPED = (
    (http_errors.LimitRequestLine, UriTooLong, None),
    (http_errors.LimitRequestHeaders, HeaderFieldsTooLarge, None),
    (http_errors.UnsupportedTransferCoding, NotImplementedByServer, None),
    (http_errors.ExpectationFailed, MalformedRequest, 417),
    (http_errors.ForbiddenProxyRequest, MalformedRequest, 403),
)
# Raised by gunicorn's parser about the app's answer or its own configuration: not the client's fault.
_NOT_THE_CLIENTS = (http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName,
                    http_errors.ConfigurationProblem)


def error_for(exc: BaseException) -> ServiceError:
    """The API error for an exception gunicorn's request handling raised."""
    if isinstance(exc, http_errors.ParseException) and not isinstance(exc, _NOT_THE_CLIENTS):
        cls, status = next(((c, s) for kind, c, s in _MAPPED if isinstance(exc, kind)), (MalformedRequest, None))
        error = cls(f"{HTTPStatus(status or cls.status_code).phrase.lower()}: {str(exc)[:MAX_QUOTED_CHARS]}")
    elif isinstance(exc, SSLError):
        error, status = MalformedRequest("the TLS handshake failed"), 403
    else:  # the app's fault, not the client's: no detail leaves the server
        return ServiceError("internal error; see the server log")
    if status is not None:
        error.status_code = status
        error.type = HTTPStatus(status).phrase.lower().replace(" ", "_")
    return error


def request_id_of(req) -> str:
    """The request id of a request gunicorn could not parse: its own, if the header was read and valid."""
    for name, value in getattr(req, "headers", None) or ():
        if name.lower() == REQUEST_ID_HEADER.lower():
            return valid_request_id(value) or new_request_id()
    return new_request_id()


class JsonThreadWorker(ThreadWorker):
    """gunicorn's gthread worker whose error answers are JSON and which drains on SIGTERM."""

    def handle_exit(self, sig, frame):
        """SIGTERM: not ready at once; stop accepting after DRAIN_DELAY_S (gunicorn then finishes what it holds)."""
        if drain.is_draining():
            return
        drain.begin()
        delay = self._drain_delay_s()
        if delay <= 0:
            self.alive = False
            return
        self.log.info("Draining: /health/ready answers 503; accepting for %g s more (DRAIN_DELAY_S)", delay)
        # The run loop looks at `alive` at least every second; a timer thread, since a signal handler must not wait.
        timer = threading.Timer(delay, self._stop_accepting)
        timer.daemon = True
        timer.start()

    def _stop_accepting(self):
        self.log.info("Drain delay over: no new connections; finishing the requests in hand")
        self.alive = False

    def _drain_delay_s(self) -> float:
        settings = getattr(self.wsgi, "config", {}).get("SETTINGS")  # None before the app is loaded
        return settings.drain_delay_s if settings is not None else 0.0

    def handle_error(self, req, client, addr, exc):
        """Log as gunicorn does, then answer with the JSON error (and close the connection)."""
        request_start = datetime.now()
        addr = addr or ("", -1)  # a unix socket
        error = error_for(exc)
        if error.status_code == 500:
            self.log.exception("Error handling request %s", getattr(req, "uri", "(no URI read)"))
        else:
            self.log.warning("Invalid request from ip=%s: %s", addr[0], exc)
        body = json.dumps(error.to_dict()).encode()
        status = f"{error.status_code} {HTTPStatus(error.status_code).phrase}"
        if req is None and isinstance(exc, (http_errors.InvalidHeader, http_errors.InvalidHeaderName)):
            req = getattr(exc, "req", None)  # the request so far, for the access log (as gunicorn does)
        if req is not None:
            try:
                environ = default_environ(req, client, self.cfg)
                environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = addr[0], str(addr[1])
                resp = Response(req, client, self.cfg)
                resp.status = status
                resp.response_length = len(body)
                self.log.access(resp, req, environ, datetime.now() - request_start)
            except Exception:  # noqa: BLE001 - a log line must not cost the client its answer
                self.log.debug("Failed to log the error answer.")
        head = (f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: application/json\r\n"
                f"{REQUEST_ID_HEADER}: {request_id_of(req)}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
        try:
            util.write_nonblock(client, head + body)
        except Exception:  # noqa: BLE001 - the client may be gone already; as gunicorn does
            self.log.debug("Failed to send error message.")
