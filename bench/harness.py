"""What every part of `python -m bench` shares: progress lines, CPU accounting, wrk."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from pathlib import Path

import psutil

from devtools.processes import ROOT

OUT = ROOT / "bench" / "out"
LUA = ROOT / "bench" / "predict.lua"


class Progress:
    def __init__(self, total: int):
        self.total, self.step, self.started = total, 0, time.monotonic()

    def __call__(self, text: str) -> None:
        self.step += 1
        print(f"[{self.step:>2}/{self.total}] {time.monotonic() - self.started:6.0f}s  {text}", flush=True)


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def run_wrk(url: str, bodies: Path, clients: int, seconds: float, offset: int) -> tuple[dict, float]:
    """One closed-loop level; returns wrk's summary and wrk's own CPU seconds."""
    OUT.mkdir(parents=True, exist_ok=True)
    summary = OUT / f"wrk-{clients}.json"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds:.0f}s", "--timeout", "60s", "-s", str(LUA), url,
         "--", str(bodies), str(offset)],
        env=dict(os.environ, WRK_OUT=str(summary)), check=True, capture_output=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(summary.read_text()), wrk_cpu
