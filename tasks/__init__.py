"""The Celery app of the workers: `celery -A tasks worker`.

Importing this package is cheap (no torch): Flower and the `celery control`
CLI import it too. torch and transformers are imported when a worker loads
its first model.
"""

from __future__ import annotations

import sys

from celery import Celery, signals

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

__all__ = ["app"]
