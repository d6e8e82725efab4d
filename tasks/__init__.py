"""The Celery app of the workers: `celery -A tasks worker`.

Importing this package is cheap (no torch): Flower and the `celery control`
CLI import it too. torch and transformers are imported when a worker loads
its first model.
"""

from __future__ import annotations

import sys

from celery import Celery, signals

from common import logcontext
from common.connections import verify_access
from common.errors import SettingsError
from common.settings import get_settings

try:
    get_settings()
except SettingsError as exc:
    print(f"tasks: bad setting: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

app = Celery("tasks")
app.config_from_object("celeryconfig")

from tasks import control, inference  # noqa: E402,F401  (register tasks.infer and the control commands)
from tasks.serving import ModelServing  # noqa: E402

app.steps["consumer"].add(ModelServing)


@signals.celeryd_init.connect
def _refuse_bad_credentials(**_):
    """A worker stops at start on a wrong Redis password or certificate, naming the variable.

    Celery would retry the broker connection forever; a refused password
    will not get better by retrying.
    """
    try:
        verify_access(get_settings().redis_urls())
    except SettingsError as exc:
        print(f"tasks: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


@signals.celeryd_init.connect
def _one_malloc_arena(**_):
    """One glibc malloc arena, so that an unload gives back what a model's load took (tasks/model_manager.py).

    celeryd_init comes before the worker starts its threads. The import is
    cheap: tasks.model_manager imports no torch.
    """
    from tasks.model_manager import one_malloc_arena

    one_malloc_arena()


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _log_in_log_format(logger, **_):
    """Celery's log handlers (root and task logger) carry the ids and write LOG_FORMAT.

    `text` keeps Celery's line and adds the ids after the message; `json`
    makes every line a JSON object (common/logcontext.py).
    """
    for handler in logger.handlers:
        logcontext.prepare(handler, get_settings().log_format)


@signals.celeryd_init.connect
def _name_the_worker(sender, instance, **_):
    """Every line of this worker names it; with LOG_FORMAT=json every line is JSON from the start.

    Until Celery sets up its logging (its handlers are then made JSON by
    `_log_in_log_format`), a JSON handler takes what is logged and warned
    (Celery's superuser warning comes first); the banner is not JSON, so
    it is left out.
    """
    logcontext.set_process_fields(worker=str(sender))
    settings = get_settings()
    if settings.log_format == "json":
        instance.quiet = True
        logcontext.configure_root(settings.log_format, settings.log_level)


@signals.worker_ready.connect
def _no_shutdown_banner_in_json(sender, **_):
    """With LOG_FORMAT=json, SIGTERM/SIGQUIT without Celery's "worker: Warm shutdown" line.

    Celery writes it straight to stdout from the signal handler, past the
    logging, so it cannot be JSON; the handlers are installed again
    without it (everything else they do is the same).
    """
    if get_settings().log_format == "json":
        from celery.apps import worker as celery_worker

        celery_worker.install_worker_term_handler(sender.controller, verbose=False)
        celery_worker.install_worker_term_hard_handler(sender.controller, verbose=False)


__all__ = ["app"]
