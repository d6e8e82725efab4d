"""CPU per request by what it is for: py-spy samples of the webapp and the worker, sorted by purpose.

Part of `python -m bench.framework` (with --profile). While 64 clients load
the service, py-spy samples both processes, each sample the thread that
holds the GIL, that is, runs Python. (py-spy's other mode, threads it does
not judge idle, also counts threads woken and waiting for a core, of which
a loaded 2-core machine has many.) Native work outside the GIL (torch's
own threads) is shared out with the rest: for `tiny-embed` it is a few
percent of the worker's CPU, but most of it for minilm, whose worker
column this method would blur; the webapp's is Python throughout. Each
sample is put under one
purpose by its deepest frame that names one: in the libraries that serve
one purpose wherever they are called from (LIBRARY_FRAMES: Flower's
events, Prometheus, logging), else in our own modules (PROJECT_FRAMES). A
sample whose frames name none goes by the libraries it is in
(LIBRARY_PURPOSES): gunicorn, Flask and Werkzeug are the HTTP server,
Celery and kombu the worker's runtime. A process's share of samples under
a purpose, times its CPU per request measured at 64 clients (without
py-spy), is that purpose's CPU per request.

The purposes say which part of SPEC asks for the work, so the table shows
what the service spends beyond the queue floor, and on what.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

PY_SPY = str(Path(sys.executable).with_name("py-spy"))
# py-spy's samples per second: enough for a few thousand samples in 15 s,
# little enough that it does not slow what it samples.
SAMPLE_RATE = 250

TOKENIZE = "tokenize"
FORWARD = "forward and pooling"
HTTP = "HTTP server (gunicorn, Flask)"
RUNTIME = "Celery's runtime (consumer, heartbeats)"
EVENTS = "Flower events"
METRICS = "metrics"
LOGS = "logs"
OTHER = "other"

# Each purpose, and what asks for it.
PURPOSES = {
    HTTP: "the floor's own work, and the answer's JSON",
    "request checks": "the body read under limits, the schema, parameters, inputs, ids, auth, rate limit "
                      "(SPEC §3, §10)",
    "response cache": "the cache keys and level-1 reads (SPEC §6)",
    "job record and message": "the record and the message in one pipeline; delivered results' TTL (SPEC §1, §3)",
    "waiting for the answer": "the reply listener, the waiting thread woken (SPEC §3)",
    LOGS: "the webapp's access line per request, the worker's line per batch (SPEC §12)",
    METRICS: "Prometheus counters (SPEC §12)",
    "fetch": "the fetch script and the deliveries list: a dead worker's jobs go back (SPEC §10)",
    "message read": "the task message read into a job",
    TOKENIZE: "the model's own work, on the consumer thread",
    "batching": "planning, the cost model, the device thread's hand-offs (SPEC §5)",
    FORWARD: "the model's own work, on the device thread",
    "start, store, ack": "the start script (fencing), results, records, acks, the reply (SPEC §3, §10)",
    EVENTS: "task events for Flower (SPEC §1)",
    RUNTIME: "the worker's runtime",
    OTHER: "frames none of the above names",
}

# (purpose, path prefix, function names or None for all). A sample goes to
# the purpose of its deepest frame in one of these libraries, whoever called
# them; else to that of its deepest frame in our own modules below: the
# caller decides for a helper shared by several purposes (common/envelope.py,
# redis, orjson), so those are named by no rule.
LIBRARY_FRAMES = (
    (EVENTS, "celery/events/", None),
    (METRICS, "prometheus_client/", None),
    (LOGS, "logging/", None),
)
PROJECT_FRAMES = (
    (EVENTS, "tasks/reporting.py", ("Reporter._publish_events", "Reporter.received", "Reporter._outcome_event")),
    ("start, store, ack", "tasks/reporting.py", None),
    (FORWARD, "model_store/loader/", ("FeatureExtractionRunner.run", "PipelineRunner.run", "Seq2SeqRunner.run",
                                      "QuestionAnsweringRunner.run", "StandInRunner.run")),
    (TOKENIZE, "model_store/loader/", None),  # the runners' encode and its checks
    (TOKENIZE, "tasks/lanes.py", ("encode",)),
    ("batching", "tasks/batcher.py", None),
    ("batching", "tasks/planning.py", None),
    ("batching", "tasks/costmodel.py", None),
    ("batching", "tasks/lanes.py", None),
    ("batching", "tasks/coalescing.py", None),
    ("batching", "tasks/fairness.py", None),
    ("message read", "tasks/job.py", None),
    ("message read", "tasks/serving.py", ("ModelServing.take_delivery",)),
    ("fetch", "tasks/sources.py", None),
    ("fetch", "tasks/kombu_source.py", None),
    (LOGS, "webapp/accesslog.py", None),
    (LOGS, "common/logcontext.py", None),
    (METRICS, "webapp/metrics.py", None),
    ("response cache", "webapp/response_cache.py", None),
    ("response cache", "common/cache_keys.py", None),
    ("response cache", "webapp/admission.py", ("cached_outputs",)),
    ("waiting for the answer", "webapp/results.py", None),
    ("waiting for the answer", "webapp/job_service.py", ("JobService.wait", "JobService.leave")),
    ("job record and message", "webapp/publisher.py", None),
    ("job record and message", "webapp/job_service.py", None),
    ("job record and message", "webapp/views/predict.py", ("_submit",)),
    ("request checks", "webapp/body.py", None),
    ("request checks", "webapp/schemas.py", None),
    ("request checks", "webapp/auth.py", None),
    ("request checks", "webapp/ratelimit.py", None),
    ("request checks", "webapp/requestids.py", None),
    ("request checks", "webapp/catalog.py", None),
    ("request checks", "webapp/admission.py", None),
    ("request checks", "webapp/workers.py", None),
    ("request checks", "webapp/views/predict.py", ("_accept",)),
)
# A sample no frame above names: by the first of these among its frames, from the thread's root.
LIBRARY_PURPOSES = (
    ("gunicorn/", HTTP), ("flask/", HTTP), ("werkzeug/", HTTP), ("webapp/", HTTP),
    ("concurrent/futures/", HTTP),  # gunicorn's thread pool
    ("celery/", RUNTIME), ("kombu/", RUNTIME), ("billiard/", RUNTIME), ("tasks/", RUNTIME),
)


def _deepest(parts: list[tuple[str, str]], rules) -> str | None:
    for function, path in reversed(parts):
        for purpose, prefix, functions in rules:
            if path.startswith(prefix) and (functions is None or function in functions):
                return purpose
    return None


def frame_parts(frame: str) -> tuple[str, str]:
    """(function, path) of a py-spy frame `Function (path/to/file.py:123)`."""
    function, _, where = frame.rpartition(" (")
    return function, where.rsplit(":", 1)[0]


def purpose_of(frames: list[str]) -> str:
    """The purpose of one sample, its frames from the thread's root to the running one."""
    parts = [frame_parts(frame) for frame in frames]
    purpose = _deepest(parts, LIBRARY_FRAMES) or _deepest(parts, PROJECT_FRAMES)
    if purpose is not None:
        return purpose
    for _function, path in parts:
        for prefix, purpose in LIBRARY_PURPOSES:
            if path.startswith(prefix):
                return purpose
    return OTHER


def shares(raw: str) -> dict[str, float]:
    """Each purpose's share of the samples in py-spy's raw output (`frame;frame;... count` lines)."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        if frames[0].startswith("process "):
            frames = frames[1:]
        counts[purpose_of(frames)] += int(count)
    total = sum(counts.values())
    return {purpose: n / total for purpose, n in counts.items()} if total else {}


def spy(pid: int, seconds: float, output: Path, *options: str) -> subprocess.Popen:
    """py-spy on a process tree (gunicorn's master and its workers, or the Celery worker); finish() waits."""
    return subprocess.Popen(
        [PY_SPY, "record", "--pid", str(pid), "--subprocesses", "--duration", f"{seconds:.0f}", *options,
         "--output", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(spies: dict[str, subprocess.Popen], timeout: float) -> None:
    """Wait for each py-spy; raise if one failed."""
    for name, process in spies.items():
        _, err = process.communicate(timeout=timeout)
        if process.returncode != 0:
            raise RuntimeError(f"py-spy on the {name} failed: {err.decode()[-500:]}")


def record(pids: dict[str, int], seconds: float, out_dir: Path) -> dict[str, subprocess.Popen]:
    """Start py-spy (raw output, the GIL's holder) on each process; finish(), then read()."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return {name: spy(pid, seconds, out_dir / f"{name}.raw", "--rate", str(SAMPLE_RATE), "--gil", "--format", "raw")
            for name, pid in pids.items()}


def read(names, out_dir: Path) -> dict[str, dict[str, float]]:
    """Each process's purpose shares, from the raw output record() had written."""
    return {name: shares((out_dir / f"{name}.raw").read_text()) for name in names}


def cpu_by_purpose(purpose_shares: dict[str, dict[str, float]], cpu_ms: dict[str, float]) -> dict[str, dict]:
    """Per purpose, CPU ms per request in each process: its share of the samples × its CPU per request."""
    return {purpose: {name: share.get(purpose, 0.0) * cpu_ms[name] for name, share in purpose_shares.items()}
            for purpose in PURPOSES}


def report(by_purpose: dict[str, dict], names: tuple[str, ...] = ("webapp", "worker")) -> list[str]:
    """The table: purpose, CPU ms per request in each process, and what asks for it."""
    lines = ["| purpose | " + " | ".join(f"{name} ms" for name in names) + " | total ms | what for |",
             "|---|" + "---:|" * (len(names) + 1) + "---|"]
    totals = dict.fromkeys(names, 0.0)
    for purpose, why in PURPOSES.items():
        row = by_purpose.get(purpose, {})
        if sum(row.values()) < 0.005:
            continue
        for name in names:
            totals[name] += row.get(name, 0.0)
        lines.append(f"| {purpose} | " + " | ".join(f"{row.get(name, 0.0):.2f}" for name in names)
                     + f" | {sum(row.values()):.2f} | {why} |")
    lines.append("| **total** | " + " | ".join(f"{totals[name]:.2f}" for name in names)
                 + f" | **{sum(totals.values()):.2f}** | |")
    return lines
