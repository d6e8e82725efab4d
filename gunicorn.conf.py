"""gunicorn settings for `gunicorn 'webapp:create_app()'` (read from the working directory).

Each /predict waits for its result on a thread, so the thread count, not
the CPU count, bounds how many requests wait at once. Override any of
these on the command line or with GUNICORN_CMD_ARGS.
"""

import math
import os
import shutil
import tempfile

# Loopback unless HOST says otherwise (HOST=0.0.0.0 to serve other machines;
# put tokens in place first: see SECURITY.md). WEB_BIND overrides both.
bind = os.environ.get("WEB_BIND") or f"{os.environ.get('HOST') or '127.0.0.1'}:{os.environ.get('WEB_PORT') or '8000'}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# gunicorn's gthread worker, with its own error answers (414, 431, 400 on a
# request it cannot parse) in the API's JSON shape instead of HTML.
worker_class = "webapp.gunicorn_worker.JsonThreadWorker"
threads = int(os.environ.get("WEB_THREADS", "64"))
# /predict may wait up to 300 s (options.wait); gthread workers stay alive
# while their threads wait, so this only bounds a truly stuck worker.
timeout = 360
# On SIGTERM a worker keeps accepting for DRAIN_DELAY_S (answering
# /health/ready with 503), then has this long to finish the requests it
# holds; the master kills what is left after graceful_timeout. The delay is
# added so it never eats into the time requests have to finish. A bad value
# is the app's to report (common.settings names the variable).
try:
    _drain_delay_s = max(0.0, float(os.environ.get("DRAIN_DELAY_S") or 0))
except ValueError:
    _drain_delay_s = 0.0
graceful_timeout = 30 + math.ceil(_drain_delay_s)
keepalive = 5
# The app logs one access line per request itself (webapp/accesslog.py, with
# the route, request id and job id); WEB_ACCESS_LOG adds gunicorn's own.
accesslog = os.environ.get("WEB_ACCESS_LOG") or None
# gunicorn's own lines in LOG_FORMAT (json: one object per line, like the app's).
logger_class = "webapp.gunicorn_logger.ContextLogger"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()

# Prometheus: every worker process writes its counters to files here and
# /metrics adds them up, whichever process answers the scrape.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="atf-prometheus-")
    _owned_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
else:
    _owned_metrics_dir = None


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _owned_metrics_dir:
        shutil.rmtree(_owned_metrics_dir, ignore_errors=True)
