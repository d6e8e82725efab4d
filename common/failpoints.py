"""Faults a worker provokes on purpose, for the fault suite only (ATF_FAILPOINTS).

Off unless the environment variable is set, and then only for inputs that
carry the chosen marker — a poison job as a real one would behave:

    ATF_FAILPOINTS="exit_on=<marker>"           the worker process exits (os._exit) before the
                                                batch holding such an input runs, like a segfault
    ATF_FAILPOINTS="sleep_on=<marker>:<seconds>" the batch holding such an input takes that long

Several are separated by `;`. The worker logs a warning at start when any
is set; a production deployment never sets it.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)

ENV = "ATF_FAILPOINTS"


def _parse(raw: str) -> dict[str, str]:
    points = {}
    for part in raw.split(";"):
        name, _, value = part.partition("=")
        if name.strip() and value:
            points[name.strip()] = value
    return points


_points = _parse(os.environ.get(ENV, ""))
active = bool(_points)


def before_batch(inputs: list) -> None:
    """Provoke the configured fault if one of the batch's inputs carries its marker."""
    texts = [item if isinstance(item, str) else repr(item) for item in inputs]
    marker = _points.get("exit_on")
    if marker and any(marker in text for text in texts):
        log.error("failpoint exit_on=%r: exiting now", marker)
        os._exit(70)
    spec = _points.get("sleep_on")
    if spec:
        marker, _, seconds = spec.rpartition(":")
        if marker and any(marker in text for text in texts):
            time.sleep(float(seconds))


def describe() -> str:
    return ", ".join(f"{k}={v}" for k, v in _points.items())
