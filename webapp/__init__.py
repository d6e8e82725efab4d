"""The HTTP API: a Flask app factory, run by gunicorn.

    gunicorn 'webapp:create_app()'

The webapp validates requests, publishes jobs to the per-model Celery
queues and waits for their results. It never imports torch or transformers.
"""

from __future__ import annotations

import sys

from flask import Flask
from flask.globals import request_ctx

from common import logcontext
from common.connections import verify_access
from common.errors import SettingsError
from common.settings import Settings, get_settings

# gunicorn's exit status for a worker that cannot boot: the master stops
# rather than start, again and again, a worker that can only fail again.
WORKER_BOOT_ERROR = 3


class ApiFlask(Flask):
    """Flask, with OPTIONS answered in JSON like everything else."""

    def make_default_options_response(self):
        """200 `{"allow": [...]}` with the `Allow` header (Flask's own answer has an empty HTML body)."""
        methods = sorted(request_ctx.url_adapter.allowed_methods())
        response = self.json.response({"allow": methods})
        response.allow.update(methods)
        return response


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app; `test_config` may hold SETTINGS (a Settings) and Flask keys."""
    test_config = dict(test_config or {})
    try:
        injected = test_config.pop("SETTINGS", None)
        settings = injected or get_settings()
    except SettingsError as exc:
        # gunicorn would print a traceback; the variable's name is what matters.
        print(f"webapp: bad setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if injected is None:
        try:
            verify_access(settings.redis_urls())  # a wrong password or certificate stops it here
        except SettingsError as exc:
            print(f"webapp: {exc}", file=sys.stderr)
            raise SystemExit(WORKER_BOOT_ERROR) from None

    app = ApiFlask(__name__)
    app.config.update(
        SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
    )
    app.config.update(test_config)
    from webapp.jsonio import OrjsonProvider

    app.json = OrjsonProvider(app)
    logcontext.configure_root(settings.log_format, settings.log_level)

    from webapp import accesslog, auth, errors, metrics, ratelimit, request_spans, requestids, services
    from webapp.views import admin, docs, health, inventory, predict

    request_spans.init_app(app)  # first: its span covers every later hook, and jobs read whether it is on
    requestids.init_app(app)  # first: every later hook and every log line may use the ids
    accesslog.init_app(app)
    services.init_app(app, settings)
    errors.init_app(app)
    metrics.init_app(app)
    ratelimit.init_app(app, settings)  # before auth: guessing tokens counts against the address
    auth.init_app(app, settings)
    for blueprint in (predict.bp, health.bp, inventory.bp, admin.bp, docs.bp):
        app.register_blueprint(blueprint)
    return app


__all__ = ["ApiFlask", "create_app", "Settings"]
