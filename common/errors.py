"""One error hierarchy for the whole service.

Each class carries the HTTP status and the snake_case `type` of the JSON
error body `{"error": {"type", "message"}}`. Workers store these errors in
a job's result by class name, so the webapp maps a failed job back to the
same status the error would have had in the webapp itself.
"""

from __future__ import annotations

# Details that become response headers, not part of the error body.
HEADER_DETAILS = ("www_authenticate",)


class SettingsError(Exception):
    """Raised when an environment variable holds a bad value."""


class ServiceError(Exception):
    """Raised when the service fails in a way no narrower error describes (the root)."""

    status_code = 500
    type = "internal_error"

    def __init__(self, message: str = "", **details):
        super().__init__(message or self.__doc__)
        self.message = message or (self.__doc__ or "").strip()
        self.details = details

    def to_dict(self) -> dict:
        body = {"type": self.type, "message": self.message}
        body.update((k, v) for k, v in self.details.items() if k not in HEADER_DETAILS)
        return {"error": body}


class BadRequest(ServiceError):
    """Raised when the request body is not valid JSON."""

    status_code = 400
    type = "invalid_json"


class MalformedRequest(ServiceError):
    """Raised when the HTTP request itself is malformed: its request line, headers or chunked framing."""

    status_code = 400
    type = "bad_request"


class Unauthorized(ServiceError):
    """Raised when a guarded endpoint is called without a valid bearer token."""

    status_code = 401
    type = "unauthorized"


class Forbidden(ServiceError):
    """Raised when the caller is known but may not call this endpoint (or not from where it is)."""

    status_code = 403
    type = "forbidden"


class NotFound(ServiceError):
    """Raised when a route does not exist."""

    status_code = 404
    type = "not_found"


class ModelNotFound(NotFound):
    """Raised when a model id names no model in the store."""

    type = "model_not_found"


class JobNotFound(NotFound):
    """Raised when a job id is unknown or its record has expired."""

    type = "job_not_found"


class MethodNotAllowed(ServiceError):
    """Raised when a route exists but not for this HTTP method."""

    status_code = 405
    type = "method_not_allowed"


class Conflict(ServiceError):
    """Raised when the request conflicts with the resource's state."""

    status_code = 409
    type = "conflict"


class JobNotCancellable(Conflict):
    """Raised when cancelling a job that already runs or has finished."""

    type = "job_not_cancellable"


class JobCancelled(Conflict):
    """Raised when waiting on a job that was cancelled."""

    type = "job_cancelled"


class RequestTimeout(ServiceError):
    """Raised when the client did not send its whole body within BODY_TIMEOUT_S."""

    status_code = 408
    type = "request_timeout"


class PayloadTooLarge(ServiceError):
    """Raised when the request body exceeds MAX_BODY_BYTES."""

    status_code = 413
    type = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    """Raised when the body is not sent as application/json."""

    status_code = 415
    type = "unsupported_media_type"


class UriTooLong(ServiceError):
    """Raised when the request line is longer than the HTTP server reads (gunicorn's limit)."""

    status_code = 414
    type = "uri_too_long"


class HeaderFieldsTooLarge(ServiceError):
    """Raised when the request's header fields are too many or too large (gunicorn's limits)."""

    status_code = 431
    type = "header_fields_too_large"


class PlacementManaged(Conflict):
    """Raised when /models/load or /models/unload names a model that has a placement (PUT /models/<id>/placement)."""

    type = "placement_managed"


class ValidationFailed(ServiceError):
    """Raised when a well-formed request breaks the API's rules."""

    status_code = 422
    type = "validation_error"


class InputTooLong(ValidationFailed):
    """Raised when an input exceeds the model's or the service's length limit."""

    type = "input_too_long"


class OverBudget(ValidationFailed):
    """Raised when one request asks for more work than a per-request budget allows."""

    type = "over_budget"


class InferenceFailed(ServiceError):
    """Raised when the model raised on an input (the item alone, after isolation)."""

    # As text-embeddings-inference does: the request was valid, the backend
    # failed on it. Neither the client's fault (4xx proper) nor a crash (500).
    status_code = 424
    type = "inference_failed"


class WorkerLost(InferenceFailed):
    """Raised when a job's worker died each of the MAX_DELIVERIES times it ran the job."""

    type = "worker_lost"


class QueueFull(ServiceError):
    """Raised when a model's queue holds MAX_QUEUE_DEPTH jobs already."""

    status_code = 429
    type = "queue_full"


class RateLimited(ServiceError):
    """Raised when a client (token or address) has used up RATE_LIMIT."""

    status_code = 429
    type = "rate_limited"


class DeadlineExceeded(ServiceError):
    """Raised when a job's options.timeout passed before the model got to it."""

    status_code = 504
    type = "deadline_exceeded"


class NotImplementedByServer(ServiceError):
    """Raised when the request uses an HTTP feature the server does not implement (a transfer coding)."""

    status_code = 501
    type = "not_implemented"


class ServiceUnavailable(ServiceError):
    """Raised when a dependency of the service is down."""

    status_code = 503
    type = "service_unavailable"


class BrokerUnavailable(ServiceUnavailable):
    """Raised when the broker or the result store cannot be reached."""

    type = "broker_unavailable"


class NoWorkers(ServiceUnavailable):
    """Raised when no worker is alive."""

    type = "no_workers"


class ModelNotLoaded(ServiceUnavailable):
    """Raised when the model is in the store but no live worker has it loaded."""

    type = "model_not_loaded"


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


ERRORS_BY_NAME: dict[str, type[ServiceError]] = {
    cls.__name__: cls for cls in [ServiceError, *_subclasses(ServiceError)]
}


def error_from_stored(exc_type: str | None, message: str) -> ServiceError:
    """Rebuild the error a worker stored in a failed job's result."""
    cls = ERRORS_BY_NAME.get(exc_type or "", None)
    if cls is None:
        # Not one of ours (a worker of another version, a foreign Celery
        # worker): its text may be a Python exception's, which stays in the
        # worker's log; the client learns only that the job failed.
        return InferenceFailed("the job failed on the worker; see the worker's log")
    return cls(message)
