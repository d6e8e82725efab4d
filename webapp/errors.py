"""Every error leaves the API as `{"error": {"type", "message"}}`."""

from __future__ import annotations

import logging
import traceback

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from common.errors import (
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
    ValidationFailed,
)

log = logging.getLogger(__name__)

# werkzeug's own errors (routing, body size) mapped to ours by status.
_HTTP_ERRORS = {
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


def error_response(error: ServiceError):
    """The JSON response for one ServiceError, with Retry-After where due."""
    response = jsonify(error.to_dict())
    response.status_code = error.status_code
    retry_after = error.details.get("retry_after")
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    challenge = error.details.get("www_authenticate")
    if challenge is not None:
        response.headers["WWW-Authenticate"] = challenge
    return response


def init_app(app: Flask) -> None:
    """Register the handlers that turn every failure into the JSON shape."""

    @app.errorhandler(ServiceError)
    def handle_service_error(error: ServiceError):
        if error.__cause__ is not None and error.status_code >= 500:
            # The cause's text (a host, a port, a library's words) goes to the log, not to the client.
            log.warning("%s %s: %s: %s", request.method, request.path, error.message, error.__cause__)
        return error_response(error)

    @app.errorhandler(HTTPException)
    def handle_http_exception(error: HTTPException):
        cls = _HTTP_ERRORS.get(error.code)
        if cls is None:
            cls = ValidationFailed if error.code and 400 <= error.code < 500 else ServiceError
            mapped = cls(error.description or error.name)
            mapped.status_code = error.code or 500
        elif cls is PayloadTooLarge:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            mapped = cls(f"request body is larger than {limit} bytes (MAX_BODY_BYTES)")
        else:
            mapped = cls(error.description or error.name)
        response = error_response(mapped)
        if error.code == 405 and getattr(error, "valid_methods", None):
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def handle_unexpected(error: Exception):
        # Where it failed, not the exception's text: that may quote the request's inputs.
        frames = "".join(traceback.format_tb(error.__traceback__))
        log.error("unhandled %s; traceback (most recent call last):\n%s", type(error).__name__, frames.rstrip())
        return error_response(ServiceError("internal error; see the server log"))
