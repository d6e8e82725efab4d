"""Optional rate limits (RATE_LIMIT, off by default), by Flask-Limiter.

The counters live in the Redis at REDIS_URL, so every gunicorn process
(and every webapp host) shares them. One budget per client across all
endpoints: per valid bearer token when one is sent (counted under its
SHA-256, never the token), else per client address — an unknown token
counts against its address, so guessing tokens does not buy a fresh
budget each try. Health, metrics and docs are never limited. Past the
limit: 429 `rate_limited` with `Retry-After`.
"""

from __future__ import annotations

import logging
import math
import time

from flask import Flask, request

from common.errors import RateLimited
from common.protocol import KEY_PREFIX
from common.settings import Settings
from webapp import auth
from webapp.errors import error_response

RATE_LIMIT_KEY_PREFIX = KEY_PREFIX + "ratelimit"

# Never limited: a monitor or a load balancer must always get its answer.
EXEMPT_BLUEPRINTS = frozenset({"health", "docs"})
EXEMPT_ENDPOINTS = frozenset({"metrics"})


class _OneLine(logging.Filter):
    """Flask-Limiter logs a whole traceback per request while Redis is down; one line says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()}: {record.exc_info[1]}"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


def client_key() -> str:
    """The budget a request counts against: its valid token's digest, else its address."""
    role, token_digest = auth.caller()
    if token_digest is not None:
        return "token:" + token_digest.hex()[:32]
    return "addr:" + (request.remote_addr or "unknown")


def _exempt() -> bool:
    return request.blueprint in EXEMPT_BLUEPRINTS or request.endpoint in EXEMPT_ENDPOINTS


def storage_uri(redis_url: str) -> str:
    """REDIS_URL as limits names it (a Unix socket is redis+unix://)."""
    return "redis+unix://" + redis_url[len("unix://"):] if redis_url.startswith("unix://") else redis_url


def init_app(app: Flask, settings: Settings) -> None:
    """With RATE_LIMIT set, check every request against it before the view (and before auth)."""
    if not settings.rate_limit:
        return
    from flask_limiter import Limiter, RateLimitExceeded

    limiter = Limiter(
        key_func=client_key,
        application_limits=[settings.rate_limit],  # one budget shared by every route
        storage_uri=storage_uri(settings.redis_url),
        storage_options={"key_prefix": RATE_LIMIT_KEY_PREFIX, "socket_connect_timeout": 2, "socket_timeout": 5},
        strategy="fixed-window",
        # Redis down: let requests through; they meet the outage themselves (503), never a 500 here.
        swallow_errors=True,
    )
    limiter.request_filter(_exempt)
    limiter.logger.addFilter(_OneLine())
    limiter.init_app(app)
    app.extensions["atf_limiter"] = limiter

    @app.errorhandler(RateLimitExceeded)
    def too_many_requests(exc: RateLimitExceeded):
        window = exc.limit.limit.get_expiry()
        try:  # limits rounds the window's end up a second: never say more than the window
            retry_after = min(window, max(1, math.ceil(limiter.current_limit.reset_at - time.time())))
        except Exception:  # noqa: BLE001 - the window's end unreadable (Redis gone): the whole window
            retry_after = window
        return error_response(RateLimited(f"rate limit of {exc.description} reached (RATE_LIMIT); "
                                          f"retry in {retry_after} s", retry_after=retry_after))
