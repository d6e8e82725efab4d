"""gunicorn's logger, writing its own lines (startup, worker boots, errors) in LOG_FORMAT.

With LOG_FORMAT=json every line of a webapp's log is a JSON object: the
app's (common/logcontext.py) and gunicorn's alike. With `text` gunicorn
keeps its usual format. gunicorn.conf.py selects it (`logger_class`).
"""

from __future__ import annotations

import sys

from gunicorn.glogging import Logger

from common import logcontext
from common.errors import SettingsError
from common.settings import get_settings


class ContextLogger(Logger):
    """gunicorn's logger whose handlers format as LOG_FORMAT says and carry the ids filter."""

    def setup(self, cfg):
        super().setup(cfg)
        try:
            log_format = get_settings().log_format
        except SettingsError as exc:
            # Before any worker boots: the master stops here, naming the variable.
            print(f"webapp: bad setting: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        if log_format == "json":
            for handler in (*self.error_log.handlers, *self.access_log.handlers):
                logcontext.prepare(handler, log_format)
