"""`python -m bench` (or `make bench`): the system against the physical limit, in one run.

1. the in-process ceiling of `minilm` on the texts below (bench/ceiling.py);
2. the system through HTTP POST /predict — a private Redis, one worker,
   the webapp under gunicorn with its default settings — at 1, 8, 32 and
   64 concurrent clients (wrk, closed loop), each request a different
   sentence of real English (CPython's pydoc_data.topics), cache bypassed;
3. the same with batching off (MAX_BATCH_SIZE=1);
4. the response cache: hit latency at each level, throughput with 30% repeats (bench/cache.py);
5. the framework's own cost: a nearly free model against the HTTP floor, twice,
   with py-spy flame graphs in bench/profiles/ (bench/framework.py);
6. unloading a model: the RSS it gives back (bench/unload.py);
then the ratios, a markdown table (bench/RESULTS.md), a PNG plot and the raw
figures (bench/out/). CPU time per request is read for every process, so
the report says where the CPU goes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import redis

from bench.cache import measure_cache
from bench.cache import report as cache_report
from bench.framework import QUEUE_FLOOR, latency_phases, measure_framework
from bench.framework import report as framework_report
from bench.harness import OUT, Progress, cpu_seconds, run_wrk, tree
from bench.load import sentences
from bench.replay import batches_in_log
from bench.scaling import section_of
from bench.unload import in_process_cycles, measure_unload
from bench.unload import report as unload_report
from bench.validation_cost import report as validation_report
from common.protocol import batch_stats_key
from devtools.processes import PYTHON, ROOT, Webapp, Worker, service_env
from devtools.redis_server import EmbeddedRedis

# The competitor beside a replay burns at most this share of a core: it sleeps the rest of each period.
MAX_BESIDE = 0.95


def batch_counters(client: redis.Redis, model_id: str) -> tuple[float, float, float]:
    """(forward passes, items, seconds in forward passes) the worker reports."""
    raw = client.hgetall(batch_stats_key(model_id))
    return float(raw.get(b"batches", 0)), float(raw.get(b"items", 0)), float(raw.get(b"forward_seconds", 0))


def measure_config(name: str, settings: dict, redis_server, model_dir: Path, bodies: Path, levels, seconds,
                   progress, log_dir: Path, phase_texts: tuple[str, ...] | list[str] = ()) -> list[dict]:
    """The config's rows, one per level; with `phase_texts`, the 1-client row gets one client's phases too."""
    env = service_env(redis_server.url, model_dir, preload_models="minilm", **settings)
    worker = Worker(f"bench-{name}", env, log_dir).wait_ready()
    webapp = Webapp(env, log_dir).wait_ready()
    client = redis.Redis.from_url(redis_server.url)
    rows = []
    try:
        run_wrk(webapp.url, bodies, 8, 3, 0)  # warm-up: connections, threads, kernels
        for i, clients in enumerate(levels):
            procs = {"worker": tree(worker.process.pid), "webapp": tree(webapp.process.pid),
                     "redis": [psutil.Process(redis_server.process.pid)]}
            cpu0 = {k: cpu_seconds(v) for k, v in procs.items()}
            passes0, items0, forward0 = batch_counters(client, "minilm")
            logged = worker.log_path.stat().st_size
            summary, wrk_cpu = run_wrk(webapp.url, bodies, clients, seconds, 5000 * (i + 1))
            passes1, items1, forward1 = batch_counters(client, "minilm")
            with open(worker.log_path, encoding="utf-8", errors="replace") as log:
                log.seek(logged)
                batches = batches_in_log(log.read(), "minilm")
            cpu1 = {k: cpu_seconds(v) for k, v in procs.items()}
            requests = summary["requests"]
            duration = summary["duration_us"] / 1e6
            row = {
                "config": name, "clients": clients, "requests": requests,
                "errors": summary["socket_errors"] + summary["non_2xx"],
                "rps": requests / duration,
                "p50_ms": summary["p50_us"] / 1000, "p90_ms": summary["p90_us"] / 1000,
                "p99_ms": summary["p99_us"] / 1000,
                "mean_batch": (items1 - items0) / (passes1 - passes0) if passes1 > passes0 else 0.0,
                # share of the wall time the model spent in forward passes, and their speed
                "device_busy": (forward1 - forward0) / duration,
                "forward_items_per_s": (items1 - items0) / (forward1 - forward0) if forward1 > forward0 else 0.0,
                "cpu_ms_per_request": {k: 1000 * (cpu1[k] - cpu0[k]) / max(requests, 1) for k in procs},
                "cores_used": {k: (cpu1[k] - cpu0[k]) / duration for k in procs},
                "batches": batches,  # (items, longest tokens) of each forward pass, from the worker's log
            }
            row["cpu_ms_per_request"]["wrk"] = 1000 * wrk_cpu / max(requests, 1)
            rows.append(row)
            progress(f"batching {name:<3} {clients:>2} clients: {row['rps']:6.1f} req/s, p50 {row['p50_ms']:7.1f} ms, "
                     f"p99 {row['p99_ms']:7.1f} ms, mean batch {row['mean_batch']:4.1f}, model busy "
                     f"{100 * row['device_busy']:3.0f}% at {row['forward_items_per_s']:5.1f} items/s, "
                     f"errors {row['errors']}")
        alone = [r for r in rows if r["clients"] == 1]
        if phase_texts and alone:
            alone[0]["phases"] = latency_phases(webapp.url, redis_server.url, list(phase_texts), len(phase_texts),
                                                "minilm")
    finally:
        webapp.stop()
        worker.stop()
    return rows


def replay(model_path: Path, batches_json: Path, beside: float = 0.0, name: str = "replay") -> dict:
    """bench/replay.py on `batches_json`, in a process of its own (`beside`: a competitor's share of a core)."""
    out_json = OUT / f"{name}.json"
    subprocess.run([PYTHON, "-m", "bench.replay", str(model_path), str(batches_json), str(out_json),
                    f"{beside:.3f}"], cwd=ROOT, check=True)
    return json.loads(out_json.read_text())


def queue_floor_cpu(framework: list[dict], clients: int) -> float:
    """The queue floor's CPU per request at `clients`, all its processes and the client (the lesser run)."""
    return min(sum(r["cpu_ms_per_request"].values()) for run in framework for r in run["rows"]
               if r["system"] == QUEUE_FLOOR and r["clients"] == clients)


def others_cpu(row: dict) -> float:
    """The CPU ms per request the service's processes other than the worker took at this level."""
    cpu = row["cpu_ms_per_request"]
    return sum(cpu.get(k, 0.0) for k in ("webapp", "redis", "wrk"))


def cores_at(ms_per_request: float, row: dict) -> float:
    """The share of a core that `ms_per_request` of CPU takes at this row's throughput (at most MAX_BESIDE)."""
    return min(ms_per_request * row["rps"] / 1000, MAX_BESIDE)


def plot(rows: list[dict], ceiling: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, style in (("on", "o-"), ("off", "s--")):
        pts = [r for r in rows if r["config"] == name]
        if not pts:
            continue
        x = [r["clients"] for r in pts]
        left.plot(x, [r["rps"] for r in pts], style, label=f"batching {name}")
        right.plot(x, [r["p50_ms"] for r in pts], style, label=f"p50, batching {name}")
        right.plot(x, [r["p99_ms"] for r in pts], style, alpha=0.5, label=f"p99, batching {name}")
    top = ceiling["ceiling_texts_per_s"]
    left.axhline(top, color="black", lw=1, label=f"in-process ceiling ({top:.0f}/s)")
    left.axhline(0.85 * top, color="grey", lw=1, ls=":", label="0.85 x ceiling")
    left.set(xscale="log", xlabel="concurrent clients", ylabel="requests/s", title="Throughput (minilm, HTTP /predict)")
    right.axhline(ceiling["single_p50_ms"], color="black", lw=1, label="in-process single forward p50")
    right.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="ms", title="Latency")
    for ax in (left, right):
        ax.set_xticks([r["clients"] for r in rows if r["config"] == "on"])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def cpu_model() -> str:
    """The processor's name (figures differ several-fold between hosts of the same size)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(rows: list[dict], ceiling: dict, args, started: str) -> str:
    on = {r["clients"]: r for r in rows if r["config"] == "on"}
    off = {r["clients"]: r for r in rows if r["config"] == "off"}
    top = ceiling["ceiling_texts_per_s"]
    most = max(on)
    lines = [
        "# Benchmark results",
        "",
        f"`python -m bench --duration {args.duration:g}` on {started}: {platform.node()}, {cpu_model()}, "
        f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, Python "
        f"{platform.python_version()}; model `minilm` (all-MiniLM-L6-v2) on the CPU; "
        f"{ceiling['texts']} sampled sentences of `pydoc_data.topics`, mean {ceiling['mean_tokens']:.1f} tokens.",
        "",
        "## Targets (SPEC §11)",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    ratio = on[most]["rps"] / top
    lines.append(f"| {most} clients ≥ 0.85 × in-process ceiling | {on[most]['rps']:.1f} / {top:.1f} = "
                 f"**{ratio:.2f}×** | {'met' if ratio >= 0.85 else 'missed'} |")
    if most in off:
        gain = on[most]["rps"] / off[most]["rps"]
        lines.append(f"| batching on vs off at {most} clients ≥ 2.5× | {on[most]['rps']:.1f} / "
                     f"{off[most]['rps']:.1f} = **{gain:.2f}×** | {'met' if gain >= 2.5 else 'missed'} |")
    if 1 in on:
        budget = ceiling["single_p50_ms"] + 5
        lines.append(f"| 1 client p50 ≤ in-process single forward p50 + 5 ms | {on[1]['p50_ms']:.1f} ms vs "
                     f"{ceiling['single_p50_ms']:.1f} + 5 = {budget:.1f} ms | "
                     f"{'met' if on[1]['p50_ms'] <= budget else 'missed'} |")
    lines += [
        "",
        "## In-process ceiling",
        "",
        "| batch | texts/s, length-sorted | texts/s, arrival order |",
        "|---:|---:|---:|",
    ]
    for size, row in ceiling["batched"].items():
        lines.append(f"| {size} | {row['sorted']:.1f} | {row['arrival']:.1f} |")
    lines += [
        "",
        f"Single forward (one text at a time): p50 {ceiling['single_p50_ms']:.1f} ms, "
        f"p99 {ceiling['single_p99_ms']:.1f} ms"
        + (f"; each after {ceiling['idle_ms']:.0f} ms idle, as a lone client's calls come in the service: p50 "
           f"{ceiling['single_after_idle_p50_ms']:.1f} ms" if "single_after_idle_p50_ms" in ceiling else "")
        + f". Ceiling: {top:.1f} texts/s (batches of {ceiling['ceiling_batch']}, length-sorted).",
        "",
        "## Through HTTP",
        "",
        "| batching | clients | req/s | × ceiling | p50 ms | p90 ms | p99 ms | mean batch | model busy "
        "| items/s in forward | errors | CPU ms/request: worker · webapp · redis · wrk |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        cpu = r["cpu_ms_per_request"]
        lines.append(
            f"| {r['config']} | {r['clients']} | {r['rps']:.1f} | {r['rps'] / top:.2f} | {r['p50_ms']:.1f} "
            f"| {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_batch']:.1f} | {100 * r['device_busy']:.0f}% "
            f"| {r['forward_items_per_s']:.1f} | {r['errors']} "
            f"| {cpu['worker']:.1f} · {cpu['webapp']:.2f} · {cpu['redis']:.2f} · {cpu['wrk']:.2f} |")
    lines += ["", "![throughput and latency](bench.png)", ""]
    lines += phase_lines(on.get(1), ceiling)
    lines += analysis(on[most], ceiling)
    return "\n".join(lines)


def phase_lines(row: dict | None, ceiling: dict) -> list[str]:
    """Where one client's request goes, against the 1-client target's budget (see framework.latency_phases)."""
    if not row or "phases" not in row:
        return []
    p = row["phases"]
    added = p["accept"] + p["queue"] + max(0.0, p["run"] - p["forward"]) + p["answer"]
    return [
        f"One client's request by phase (medians of 250 sequential requests of another set of sentences, "
        f"from the clocks on each job's record and the worker's timings in each answer, ms; the phases as in "
        f"the framework section below): accept {p['accept']:.2f} · queue {p['queue']:.2f} (broker "
        f"{p['broker']:.2f}, worker {p['worker']:.2f}) · run {p['run']:.2f}, of which the model call "
        f"{p['forward']:.2f} · answer {p['answer']:.2f} = {p['total']:.2f}. The service adds about {added:.1f} ms "
        f"to the model call (the target allows 5 over the in-process single forward); the rest of a request's "
        f"time is the model call itself, {p['forward']:.1f} ms in the worker against "
        f"{ceiling['single_p50_ms']:.1f} ms (p50, tokenizing and pooling included) in a quiet process"
        + (idle_sentence(p, ceiling) if p["forward"] > ceiling["single_p50_ms"] else "."),
        "",
    ]


def idle_sentence(p: dict, ceiling: dict) -> str:
    """Why the worker's model call is slower than the quiet process's, where the ceiling measured it."""
    if "single_after_idle_p50_ms" not in ceiling:
        return ": its two threads share the cores with the webapp, Redis and the client."
    idle = ceiling["single_after_idle_p50_ms"]
    return (
        f", which calls the model back to back. Each of the worker's calls comes after the model sat idle while "
        f"the request crossed the service; the quiet process's calls after {ceiling['idle_ms']:.0f} ms idle took "
        f"{idle:.1f} ms (p50, tokenizing included), {idle - ceiling['single_p50_ms']:+.1f} ms: the cost of a "
        "pause on this machine, not of the service's work"
        + (f"; the rest, {p['forward'] - idle:.1f} ms, is the cores shared with the webapp, Redis and the client."
           if p["forward"] > idle + 0.05 else ".")
    )


def analysis(row: dict, ceiling: dict) -> list[str]:
    """Where the CPU of one request goes at the highest concurrency, against the ideal."""
    cores = psutil.cpu_count()
    cpu = row["cpu_ms_per_request"]
    ideal_forward = 1000 * cores / ceiling["ceiling_texts_per_s"]  # all cores on the model, best batches
    total = sum(cpu.values())
    beyond = total - ideal_forward
    at_target = 1000 * cores / (0.85 * ceiling["ceiling_texts_per_s"]) - ideal_forward
    return [
        "## Where the CPU goes",
        "",
        f"At {row['clients']} clients every request costs {total:.1f} ms of CPU across all processes "
        f"({cores} cores / {row['rps']:.1f} req/s = {1000 * cores / row['rps']:.1f} ms of wall-clock core time). "
        f"The model at the in-process ceiling needs {ideal_forward:.1f} ms of CPU per text; "
        f"0.85 × ceiling leaves {at_target:.1f} ms per request for everything else.",
        "",
        "| process | CPU ms per request |",
        "|---|---:|",
        *[f"| {name} | {value:.2f} |" for name, value in cpu.items()],
        f"| **total** | **{total:.2f}** ({beyond:+.2f} over the ideal forward) |",
        "",
        f"The worker's share includes its forward passes, which ran at {row['forward_items_per_s']:.1f} items/s "
        f"while the model was busy ({100 * row['device_busy']:.0f}% of the time) — against "
        f"{ceiling['ceiling_texts_per_s']:.1f} texts/s in a quiet process: on {cores} cores the model's threads "
        f"share the CPU with the webapp, Redis and the load generator.",
        "",
        *replay_lines(row, ceiling),
        *floor_sentence(row, ceiling),
    ]


def replay_lines(row: dict, ceiling: dict) -> list[str]:
    """The distance to the ceiling, split: the batches that the load allowed, and the cores shared."""
    if not row.get("replay") or not row.get("batches"):
        return []
    top = ceiling["ceiling_texts_per_s"]
    quiet = row["replay"]["items_per_s"]
    batches = row["batches"]
    items = sum(n for n, _ in batches)
    mean_longest = sum(n * longest for n, longest in batches) / items
    how = (f"the ceiling sorts {ceiling['texts']} texts by length before cutting batches of "
           f"{ceiling['ceiling_batch']} and the worker plans from the requests in flight (at most {row['clients']}), "
           "a batch always holding the oldest request (tasks/planning.py)")
    shared = (f"the cores shared: the service's passes ran at {row['forward_items_per_s']:.1f} items/s, "
              f"{row['forward_items_per_s'] / quiet:.2f}× the same passes in a quiet process."
              + beside_sentence(row, quiet))
    lines = [
        f"The same forward passes run again in a quiet process (bench/replay.py: the {len(batches)} batches the "
        f"worker logged at {row['clients']} clients, {items / len(batches):.1f} items and {mean_longest:.0f} "
        f"tokens long on average, as tensors of their shapes): **{quiet:.1f} items/s**, {quiet / top:.2f}× the "
        "ceiling.",
        "",
    ]
    if quiet >= 0.97 * top:
        return lines + [
            f"So the batches themselves cost nothing measurable, though {how}. (Both figures come from quiet "
            f"processes minutes apart; on this VM they differ by its noise.) What remains is {shared}",
            "",
        ]
    return lines + [
        "So the distance to the ceiling has two parts:",
        "",
        f"- the batches themselves: {quiet:.1f} against {top:.1f} items/s ({quiet / top:.2f}×): {how}, so its "
        "batches are smaller or more padded;",
        f"- {shared}",
        "",
    ]


def floor_sentence(row: dict, ceiling: dict) -> list[str]:
    """The passes beside what a service as cheap as the queue floor would take at the same throughput."""
    cheap, dear = row.get("replay_queue_floor") or (None, None)
    if cheap is None:
        return []
    top = ceiling["ceiling_texts_per_s"]
    low, high = sorted((cheap["items_per_s"] / top, dear["items_per_s"] / top))
    if high < 0.85:
        verdict = ("Even so the 0.85× target is out of reach on these cores, whatever the service's own cost: the "
                   "model shares them with any path that answers over HTTP through Redis.")
    elif low >= 0.85:
        verdict = ("A service that cheap would leave the model room for the 0.85× target here (the passes' speed "
                   "bounds the throughput from above), so what keeps this one from it is its own CPU per request "
                   "beyond the queue floor (the framework section shows it by purpose).")
    else:
        verdict = ("The 0.85× target lies within that range: a service that cheap might reach it here, so part of "
                   "what keeps this one from it is its own CPU per request beyond the queue floor (the framework "
                   "section shows it by purpose).")
    return [
        "Had the service cost no more CPU per request than the queue floor of the framework section below (SPEC "
        f"§1's path with nothing on it: {cheap['cpu_ms_per_request']:.2f} ms per request for its webapp, worker, "
        f"Redis and client at 64 clients, where it amortizes most, {dear['cpu_ms_per_request']:.2f} ms at one "
        f"client; the lesser run each), those processes would take {cheap['beside']:.2f} to {dear['beside']:.2f} "
        f"of a core at {row['rps']:.1f} req/s. Beside a competitor burning that much, the same passes ran at "
        f"{cheap['items_per_s']:.1f} and {dear['items_per_s']:.1f} items/s, **{cheap['items_per_s'] / top:.2f}× and "
        f"{dear['items_per_s'] / top:.2f}×** the "
        f"ceiling. {verdict}",
        "",
    ]


def beside_sentence(row: dict, quiet: float) -> str:
    """The replay beside a competitor that takes what the webapp, Redis and the client took."""
    beside = row.get("replay_beside")
    if not beside:
        return ""
    speed = beside["items_per_s"]
    machine = beside["beside"] / psutil.cpu_count()
    amplified = 1 - speed / quiet > 1.2 * machine
    return (
        f" The webapp, Redis and the client took {beside['beside']:.2f} of a core at that level "
        f"({machine:.0%} of the machine); the same passes in the quiet process, beside a competitor process "
        f"burning that much (bench/replay.py BESIDE), ran at {speed:.1f} items/s, {speed / quiet:.2f}× the quiet "
        "replay"
        + (": the model's OpenMP threads meet at every operator, so one waiting for its core holds up the "
           "others, and the passes lose more than the share taken. " if amplified else ". ")
        + f"The service's passes ran at {row['forward_items_per_s'] / speed:.2f}× that; the worker's own other "
        "threads (the fetcher's tokenizing, the reporter) take their share too."
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=15, help="seconds per level (default 15)")
    parser.add_argument("--levels", default="1,8,32,64", help="concurrent clients (default 1,8,32,64)")
    parser.add_argument("--skip-off", action="store_true", help="do not measure with batching off")
    parser.add_argument("--skip-cache", action="store_true", help="do not measure the response cache")
    parser.add_argument("--skip-framework", action="store_true",
                        help="do not measure the framework's cost against the HTTP floor")
    parser.add_argument("--skip-unload", action="store_true", help="do not measure unloading")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"), help="markdown report path")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("bench needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    levels = [int(x) for x in args.levels.split(",")]
    configs = [("on", {})] + ([] if args.skip_off else [("off", {"max_batch_size": 1})])
    progress = Progress(5 + len(configs) * len(levels) + (0 if args.skip_cache else 3)
                        + (0 if args.skip_framework else 2 * 7 + 3) + (0 if args.skip_unload else 3))
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="atf-bench-"))
    try:
        texts = sentences()
        (work / "texts.txt").write_text("\n".join(texts) + "\n")
        bodies = OUT / "bodies.jsonl"
        with open(bodies, "w") as f:
            for text in texts:
                f.write(json.dumps({"model_id": "minilm", "inputs": text, "options": {"use_cache": False}}) + "\n")
        model_dir = work / "models"
        subprocess.run([PYTHON, "-m", "model_store", "build-demo", "minilm"], cwd=ROOT, check=True,
                       env=dict(os.environ, MODEL_DIR=str(model_dir)), stdout=subprocess.DEVNULL)
        progress(f"{len(texts)} unique sentences; demo model built")
        ceiling_json = OUT / "ceiling.json"
        subprocess.run([PYTHON, "-m", "bench.ceiling", str(model_dir / "minilm"), str(work / "texts.txt"),
                        str(ceiling_json)], cwd=ROOT, check=True)
        ceiling = json.loads(ceiling_json.read_text())
        ceiling["batched"] = {int(k): v for k, v in ceiling["batched"].items()}
        progress(f"in-process ceiling {ceiling['ceiling_texts_per_s']:.1f} texts/s (batches of "
                 f"{ceiling['ceiling_batch']}), single forward p50 {ceiling['single_p50_ms']:.1f} ms")
        rows = []
        cache = framework = unload = None
        with EmbeddedRedis() as server:
            for name, settings in configs:
                rows += measure_config(name, settings, server, model_dir, bodies, levels, args.duration,
                                       progress, work, texts[-250:] if name == "on" else ())
            top = max((r for r in rows if r["config"] == "on"), key=lambda r: r["clients"])
            batches_json = OUT / "replay-batches.json"
            batches_json.write_text(json.dumps(top["batches"]))
            top["replay"] = replay(model_dir / "minilm", batches_json)
            progress(f"the {len(top['batches'])} batches of {top['clients']} clients replayed in a quiet process: "
                     f"{top['replay']['items_per_s']:.1f} items/s")
            top["replay_beside"] = replay(model_dir / "minilm", batches_json, cores_at(others_cpu(top), top),
                                          "replay-beside")
            progress(f"... and beside a competitor taking {top['replay_beside']['beside']:.2f} of a core: "
                     f"{top['replay_beside']['items_per_s']:.1f} items/s")
            if not args.skip_cache:
                cache = measure_cache(server.url, model_dir, texts, work, run_wrk, args.duration, progress)
            if not args.skip_framework:  # twice, for the noise; the profiles during the second
                framework = [measure_framework(server, model_dir, texts, work, min(args.duration, 10), progress,
                                               profile_s=15 if run else 0) for run in range(2)]
            if framework is not None:
                top["replay_queue_floor"] = []
                for clients in (64, 1):
                    per_request = queue_floor_cpu(framework, clients)
                    beside = replay(model_dir / "minilm", batches_json, cores_at(per_request, top),
                                    f"replay-queue-floor-{clients}")
                    top["replay_queue_floor"].append(dict(beside, cpu_ms_per_request=per_request))
                progress(f"... and beside what the queue floor would take at {top['rps']:.1f} req/s (" + ", ".join(
                    f"{r['beside']:.2f} of a core: {r['items_per_s']:.1f} items/s" for r in top["replay_queue_floor"])
                    + ")")
            if not args.skip_unload:
                unload = {"worker": measure_unload(server, model_dir, work, progress)}
                unload["in_process"] = in_process_cycles(model_dir)
                progress("unload cycles in a process of their own: " + ", ".join(
                    f"{100 * c['fraction']:.0f} %" for c in unload["in_process"]))
        (OUT / "results.json").write_text(json.dumps({"ceiling": ceiling, "rows": rows, "cache": cache,
                                                         "framework": framework, "unload": unload}, indent=1))
        plot(rows, ceiling, ROOT / "bench" / "bench.png")
        text = report(rows, ceiling, args, started)
        if cache is not None:
            text += "\n" + "\n".join(cache_report(cache))
        if framework is not None:
            text += "\n" + "\n".join(framework_report(framework))
        if unload is not None:
            text += "\n" + "\n".join(unload_report(unload["worker"], unload["in_process"]))
        text += "\n" + "\n".join(validation_report())
        results = Path(args.results)
        kept = section_of(results.read_text()) if results.exists() else ""  # `make bench-scaling`'s
        results.write_text(text.rstrip("\n") + "\n\n" + kept if kept else text)
        progress(f"wrote {args.results}, bench/bench.png, {OUT / 'results.json'}")
        print()
        print(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
