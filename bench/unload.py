"""Unloading a model gives its memory back: `python -m bench.unload` (also a section of `python -m bench`).

A worker that already serves `tiny-embed` (so torch, its kernels and the
tokenizer library are initialized, as on any worker that has served a
model) loads `minilm` through the HTTP admin endpoint, serves it, unloads
it; twice. The worker records its RSS before and after each load (after
calibration, with malloc's free lists given back; the weights are
memory-mapped, so the pages passes touched) and each unload; the section
reports the share of what the load and the serving added that the unload
returned.

Then the same cycles with no worker around them (`--in-process`: a fresh
process, the same warm model, LoadedModels and the worker's own RSS and
release calls, four cycles), to tell what the model costs from what a
first load in a process sets up once.

SPEC §11: unloading a model returns ≥ 90 % of its RSS.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from bench.framework import MODEL as WARM_MODEL
from bench.framework import build_tiny_embed
from bench.load import sentences
from devtools.processes import ROOT, Webapp, Worker, service_env
from devtools.redis_server import EmbeddedRedis

CYCLES = 2
IN_PROCESS_CYCLES = 4


def _call(url: str, method: str = "GET", body: dict | None = None, timeout: float = 300) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def measure_unload(redis_server, model_dir: Path, work: Path, progress=print) -> list[dict]:
    build_tiny_embed(model_dir)
    env = service_env(redis_server.url, model_dir, preload_models=WARM_MODEL)
    worker = Worker("bench-unload", env, work).wait_ready()
    webapp = Webapp(env, work).wait_ready()
    texts = sentences()[:64]
    cycles = []
    try:
        for cycle in range(1, CYCLES + 1):
            _call(webapp.url + "/models/load", "POST", {"model_id": "minilm", "workers": [worker.name]})
            for text in texts:
                _call(webapp.url + "/predict", "POST", {"model_id": "minilm", "inputs": text,
                                                        "options": {"use_cache": False}})
            _call(webapp.url + "/models/unload", "POST", {"model_id": "minilm"})
            record = {w["name"]: w for w in _call(webapp.url + "/workers")}[worker.name]["memory"]["models"]["minilm"]
            added = record["rss_after_load"] - record["rss_before_load"]
            returned = record["rss_before_unload"] - record["rss_after_unload"]
            grew = record["rss_before_unload"] - record["rss_before_load"]  # the load and the serving
            cycles.append({"cycle": cycle, "fraction": returned / grew if grew > 0 else 0.0,
                           "added_mb": added / 1e6, "returned_mb": returned / 1e6,
                           "served_mb": (record["rss_before_unload"] - record["rss_after_load"]) / 1e6,
                           "weights_mb": (record.get("weights_bytes") or 0) / 1e6})
            progress(f"unload cycle {cycle}: load added {added / 1e6:.1f} MB, unload returned "
                     f"{returned / 1e6:.1f} MB ({100 * cycles[-1]['fraction']:.0f} % of what load and serving added)")
    finally:
        webapp.stop()
        worker.stop()
    return cycles


def in_process_cycles(model_dir: Path, cycles: int = IN_PROCESS_CYCLES) -> list[dict]:
    """The cycles in a fresh process of their own (see `_cycle_in_process`)."""
    out = subprocess.run([sys.executable, "-m", "bench.unload", "--in-process", str(model_dir), str(cycles)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"bench.unload --in-process exited {out.returncode}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cycle_in_process(model_dir: Path, cycles: int) -> list[dict]:
    """Warm on WARM_MODEL, then load minilm, run 64 texts in batches of 1, 8, 32 and 23, unload; `cycles` times."""
    from model_store.loaded_models import LoadedModels
    from model_store.store import ModelStore
    from tasks.model_manager import free_mkl_buffers, one_malloc_arena, release_memory, rss_bytes

    one_malloc_arena()  # as the worker does at its start
    models = LoadedModels(ModelStore(model_dir), "cpu")
    texts = sentences()[:64]
    warm = models.load(WARM_MODEL, "feature-extraction").runner
    warm.run(warm.encode(texts[:2], {}), {})
    del warm
    models.unload(WARM_MODEL)
    release_memory("cpu")
    start = rss_bytes()
    out = []
    for cycle in range(1, cycles + 1):
        release_memory("cpu")
        before = rss_bytes()
        runner = models.load("minilm", "feature-extraction").runner
        done = 0
        for size in (1, 8, 32, 23):
            runner.run(runner.encode(texts[done:done + size], {}), {})
            done += size
        release_memory("cpu")
        loaded = rss_bytes()
        del runner
        models.unload("minilm")
        free_mkl_buffers()
        release_memory("cpu")
        after = rss_bytes()
        out.append({"cycle": cycle, "added_mb": (loaded - before) / 1e6, "returned_mb": (loaded - after) / 1e6,
                    "fraction": (loaded - after) / (loaded - before) if loaded > before else 0.0,
                    "above_start_mb": (after - start) / 1e6})
    return out


def report(cycles: list[dict], alone: list[dict] | None = None) -> list[str]:
    worst = min(c["fraction"] for c in cycles)
    lines = [
        "## Unloading a model",
        "",
        f"`python -m bench.unload`: a CPU worker that serves `{WARM_MODEL}` loads `minilm` (HTTP "
        "`/models/load`), answers 64 requests, unloads it (`/models/unload`); twice. RSS as the worker "
        "records it: before the load, after it (calibrated, malloc's free lists given back; the weights are "
        "memory-mapped, so only the pages passes touched count), before and after the unload.",
        "",
        "| target | measured | |",
        "|---|---|---|",
        "| unloading returns ≥ 90 % of the RSS the model added (its load and its serving) | "
        f"**{100 * worst:.0f} %** (the worse cycle) | {'met' if worst >= 0.9 else 'missed'} |",
        "",
        "| cycle | weights MB | load added MB | serving added MB | unload returned MB | returned / (load + serving) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cycles:
        lines.append(f"| {c['cycle']} | {c['weights_mb']:.1f} | {c['added_mb']:.1f} | {c['served_mb']:.1f} "
                     f"| {c['returned_mb']:.1f} | {100 * c['fraction']:.0f} % |")
    if alone:
        lines += [
            "",
            f"The same cycles with no worker around them (`python -m bench.unload --in-process`: a fresh process "
            f"warmed on `{WARM_MODEL}`, the worker's LoadedModels and release calls), {len(alone)} cycles:",
            "",
            "| cycle | load and serving added MB | unload returned MB | returned / added | RSS above the start MB |",
            "|---:|---:|---:|---:|---:|",
        ]
        lines += [f"| {c['cycle']} | {c['added_mb']:.1f} | {c['returned_mb']:.1f} | {100 * c['fraction']:.0f} % "
                  f"| {c['above_start_mb']:+.1f} |" for c in alone]
    return lines + [""]


def main() -> int:
    if sys.argv[1:2] == ["--in-process"]:
        print(json.dumps(_cycle_in_process(Path(sys.argv[2]), int(sys.argv[3]))))
        return 0
    work = Path(tempfile.mkdtemp(prefix="atf-bench-"))
    try:
        with EmbeddedRedis() as server:
            cycles = measure_unload(server, work / "models", work)
        print("\n".join(report(cycles, in_process_cycles(work / "models"))))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
