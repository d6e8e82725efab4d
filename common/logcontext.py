"""Who a log line is about: the job, request, model and worker, on every record where known.

Code that handles a request or a job binds its ids to a context variable
(`bind`, `bound`, `start`): the webapp per request, the worker per job
it reads. A filter on each handler (`ContextFilter`) copies them onto the
record, so any logger's lines carry them — the project's, Flask's,
Celery's, kombu's — without passing ids through every call; what a call
gives in `extra=` wins. The formatter writes them: `LOG_FORMAT=text`
appends `[model=… job=… req=…]` to the process's usual line, `json`
writes one JSON object per line (python-json-logger) with `ts`, `level`,
`logger`, `msg` and the ids as fields.

Ids only, never a job's inputs (SPEC §10).
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import datetime, timezone

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

from common.requestid import printable_id

# The fields a record may carry, in the order the text format shows them; a batch line names
# several jobs (job_ids, request_ids), a line about one job names it (job_id, request_id).
FIELDS = ("job_id", "request_id", "model_id", "worker", "batch_size")
_TEXT_FIELDS = (("model_id", "model"), ("job_id", "job"), ("job_ids", "jobs"), ("request_id", "req"),
                ("request_ids", "reqs"))
# A record's Python attributes, never written as fields (python-json-logger's list and Python 3.12's).
_NOT_FIELDS = (*RESERVED_ATTRS, "taskName")

_context: ContextVar[dict | None] = ContextVar("atf_log_context", default=None)  # replaced, never changed in place
_process: dict = {}  # the same for every line of this process (the worker's name)


def start(**fields) -> Token:
    """A fresh context with `fields` (a request begins): nothing of the thread's last request stays."""
    return _context.set(_known(fields))


def bind(**fields) -> Token:
    """Add `fields` (those not None) to the current context; `reset` undoes it."""
    return _context.set({**current(), **_known(fields)})


def reset(token: Token) -> None:
    _context.reset(token)


def current() -> dict:
    """The fields bound here now."""
    return _context.get() or {}


@contextmanager
def bound(**fields):
    """Bind `fields` for the block.

    An exception leaving the block keeps them (`_atf_log_fields`), so the
    traceback logged later, out of this context — Celery's "Unrecoverable
    error", a thread's last words — still names the job it came from.
    """
    token = bind(**fields)
    try:
        yield
    except BaseException as exc:
        if getattr(exc, "_atf_log_fields", None) is None:
            try:
                exc._atf_log_fields = current()
            except AttributeError:  # an exception type that takes no attributes
                pass
        raise
    finally:
        _context.reset(token)


def set_process_fields(**fields) -> None:
    """Fields every line of this process carries (the worker's name)."""
    _process.update(_known(fields))


def job_fields(job) -> dict:
    """A job's ids, for `extra=` or `bound(...)`."""
    return _known({"job_id": printable_id(job.id), "request_id": getattr(job, "request_id", None),
                   "model_id": job.model_id or None})


def batch_fields(jobs, model_id: str, batch_size: int) -> dict:
    """The ids of a batch's jobs; `job_id`/`request_id` too when it ran one job."""
    fields = {"model_id": model_id, "batch_size": batch_size, "job_ids": [printable_id(job.id) for job in jobs],
              "request_ids": [job.request_id for job in jobs if job.request_id]}
    if len(jobs) == 1:
        fields.update(job_fields(jobs[0]))
    return fields


def _known(fields: dict) -> dict:
    return {name: value for name, value in fields.items() if value is not None}


class ContextFilter(logging.Filter):
    """Puts the bound ids on every record a handler writes (a record's own `extra=` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = {**_process, **_exception_fields(record), **_kombu_fields(record), **current()}
        for name, value in fields.items():
            if name not in record.__dict__:
                setattr(record, name, value)
        return True


def _exception_fields(record: logging.LogRecord) -> dict:
    """The ids an exception took with it out of a `bound` block (see `bound`)."""
    exc = record.exc_info[1] if record.exc_info else None
    seen = 0
    while exc is not None and seen < 8:  # the exception, then what it was raised from or during
        fields = getattr(exc, "_atf_log_fields", None)
        if fields:
            return fields
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return {}


# kombu logs this when a message reaches a queue nobody consumes any more (the Redis
# transport, after a queue was cancelled); it names the queue, not the message.
_KOMBU_REQUEUING = "Requeuing undeliverable message"


def _kombu_fields(record: logging.LogRecord) -> dict:
    """The job id of the message behind kombu's "Requeuing undeliverable message".

    kombu logs it from its virtual `Transport._deliver(message, queue)` with the queue
    only; the message is a local of that frame, which logs synchronously
    through this filter, so its headers are read from there.
    """
    if not (record.name.startswith("kombu") and isinstance(record.msg, str)
            and record.msg.startswith(_KOMBU_REQUEUING)):
        return {}
    frame = sys._getframe(1)
    for _ in range(30):
        if frame is None:
            return {}
        if frame.f_code.co_name == "_deliver" and isinstance(frame.f_locals.get("message"), dict):
            headers = frame.f_locals["message"].get("headers") or {}
            return _known({"job_id": printable_id(headers.get("id")),
                           "request_id": printable_id(headers.get("request_id"))})
        frame = frame.f_back
    return {}


def ids_text(record: logging.LogRecord) -> str:
    """`[model=… job=… req=…]` for the ids a record carries ("" when none)."""
    parts = []
    for name, label in _TEXT_FIELDS:
        value = record.__dict__.get(name)
        if isinstance(value, list):
            if not value or (name == "job_ids" and "job_id" in record.__dict__) or (
                    name == "request_ids" and "request_id" in record.__dict__):
                continue
            value = ",".join(map(str, value))  # all of them: a job's lines are found by grepping its id
        if value is not None:
            parts.append(f"{label}={value}")
    return f"[{' '.join(parts)}]" if parts else ""


class TextFormatter(logging.Formatter):
    """Another formatter's lines (the process's usual format), with the ids after the message's first line."""

    def __init__(self, inner: logging.Formatter | None = None):
        super().__init__()
        self.inner = inner or logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        ids = ids_text(record)
        if not ids:
            return text
        first, newline, rest = text.partition("\n")
        return f"{first} {ids}{newline}{rest}"


class JsonFormatter(_LibraryJsonFormatter):
    """One JSON object per line: `ts`, `level`, `logger`, `msg`, the ids where known, and any `extra=`."""

    def __init__(self):
        super().__init__(["levelname", "name", "message"], reserved_attrs=_NOT_FIELDS,
                         rename_fields={"levelname": "level", "name": "logger", "message": "msg"})

    def add_fields(self, log_data: dict, record: logging.LogRecord, message_dict: dict) -> None:
        log_data["ts"] = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
        super().add_fields(log_data, record, message_dict)


def formatter(log_format: str, inner: logging.Formatter | None = None) -> logging.Formatter:
    """The formatter for LOG_FORMAT; `inner` is the process's usual text format."""
    return JsonFormatter() if log_format == "json" else TextFormatter(inner)


def prepare(handler: logging.Handler, log_format: str) -> logging.Handler:
    """Give a handler the ids filter and the LOG_FORMAT formatter (text: around its own formatter)."""
    if not any(isinstance(f, ContextFilter) for f in handler.filters):
        handler.addFilter(ContextFilter())
    current = handler.formatter
    if isinstance(current, TextFormatter):
        current = current.inner
    elif isinstance(current, JsonFormatter):
        current = None
    handler.setFormatter(formatter(log_format, current))
    return handler


def configure_root(log_format: str, level: str, stream=None) -> None:
    """Log to `stream` (stderr) in LOG_FORMAT at `level`, as `logging.basicConfig` would.

    Like basicConfig it leaves a root logger configured by someone else
    alone; a handler it added before is replaced (the settings may differ).
    With `json`, Python's warnings become log records too: a line printed
    past the logging would not be JSON.
    """
    if log_format == "json":
        logging.captureWarnings(True)
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_atf_root", False)]
    if len(ours) < len(root.handlers):
        return
    for handler in ours:
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._atf_root = True
    prepare(handler, log_format)
    root.addHandler(handler)
    root.setLevel(level)
