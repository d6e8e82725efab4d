"""Whether this webapp process is shutting down: set on SIGTERM, read by /health/ready.

gunicorn's worker (webapp/gunicorn_worker.py) sets it when its SIGTERM
arrives; from then on /health/ready answers 503 "draining", so a load
balancer or Kubernetes stops sending new requests here while the ones the
process holds finish. A process-wide flag: each gunicorn worker process
drains on its own signal.
"""

from __future__ import annotations

import threading

_draining = threading.Event()


def begin() -> None:
    """Mark this process as draining (idempotent)."""
    _draining.set()


def is_draining() -> bool:
    return _draining.is_set()
