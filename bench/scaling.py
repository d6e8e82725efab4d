"""`python -m bench.scaling` (or `make bench-scaling`, as root): throughput against the number of worker hosts.

1. Scaling curve: a cluster of network-namespace hosts (devtools/cluster.py)
   — Redis, the webapp, and N = 1, 2, 4, 8 workers, each on a host of its
   own — under closed-loop HTTP load (wrk, POST /predict, 12 clients per
   worker). The model is a stand-in (model_store/standin.py) whose every
   batch lasts FORWARD_MS off the CPU, like a GPU's; MAX_BATCH_SIZE is
   small, so one worker serves at most MAX_BATCH_SIZE / FORWARD_MS
   requests per second and eight of them need little CPU: what is
   measured is the system around the model. Efficiency at N is
   throughput ÷ (N × the one-worker throughput); the CPU each part used
   (Redis, the webapp, the workers, wrk) says where the loss is.
2. Many queues: 4 workers serving 1 model each against 4 workers serving
   the same 50 models each (50 queues per worker, the load spread over
   all of them): Redis's CPU and commands idle and under load, latency,
   throughput.

Writes a section into bench/RESULTS.md between the markers below (the
rest of the file is kept; `python -m bench` keeps this section) and the
raw figures to bench/out/scaling.json. Takes about six minutes.
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
import time
from pathlib import Path

import psutil
import redis

from bench.load import sentences
from devtools.cluster import Cluster, namespace_pids, netns_allowed
from devtools.processes import PYTHON, ROOT

OUT = ROOT / "bench" / "out"
RESULTS = ROOT / "bench" / "RESULTS.md"
BEGIN, END = "<!-- scaling:begin -->", "<!-- scaling:end -->"
LUA = ROOT / "bench" / "predict.lua"
CLIENTS_PER_WORKER = 12
MANY = 50


def with_section(text: str, section: str) -> str:
    """`text` with the scaling section replaced by `section` (appended when it has none)."""
    block = f"{BEGIN}\n{section.strip()}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        return head + block + rest.split(END, 1)[1].lstrip("\n")
    return text.rstrip("\n") + "\n\n" + block


def section_of(text: str) -> str:
    """The scaling section of a RESULTS.md text, markers included ('' when it has none)."""
    if BEGIN in text and END in text:
        return BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END + "\n"
    return ""


def build_models(model_dir: Path, forward_ms: float, many_forward_ms: float) -> None:
    """`standin` (FORWARD_MS a batch) and `q01`..`q50`, ids of one stand-in of MANY_FORWARD_MS."""
    for model_id, ms in (("standin", forward_ms), ("standin-many", many_forward_ms)):
        subprocess.run([PYTHON, "-m", "model_store", "--model-dir", str(model_dir), "build-stand-in", model_id,
                        "--forward-ms", str(ms)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    for i in range(1, MANY + 1):
        (model_dir / f"q{i:02d}").symlink_to(model_dir / "standin-many", target_is_directory=True)


def write_bodies(path: Path, model_ids: list[str]) -> Path:
    """One JSON body per line, each a different sentence, the model ids taken in turn; cache bypassed."""
    with open(path, "w") as f:
        for i, text in enumerate(sentences()[:4096]):
            f.write(json.dumps({"model_id": model_ids[i % len(model_ids)], "inputs": text,
                                "options": {"use_cache": False}}) + "\n")
    return path


def run_wrk(url: str, bodies: Path, clients: int, seconds: float, offset: int) -> dict:
    summary = OUT / f"scaling-wrk-{clients}.json"
    subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{seconds:.0f}s", "--timeout", "60s", "-s", str(LUA), url,
                    "--", str(bodies), str(offset)],
                   env=dict(os.environ, WRK_OUT=str(summary)), check=True, capture_output=True)
    return json.loads(summary.read_text())


def cpu_by_part(c: Cluster) -> dict[str, float]:
    """CPU seconds so far of every process of the cluster, by part: redis, webapp, workers."""
    parts = {"redis": 0.0, "webapp": 0.0, "workers": 0.0}
    for role, host in c.state.hosts.items():
        part = {"redis": "redis", "web": "webapp"}.get(role, "workers")
        for pid in namespace_pids(host.netns):
            try:
                times = psutil.Process(pid).cpu_times()
                parts[part] += times.user + times.system
            except psutil.Error:
                pass
    return parts


def redis_counters(client: redis.Redis) -> dict[str, float]:
    stats = client.info("stats")
    clients = client.info("clients")
    return {"commands": float(stats["total_commands_processed"]), "connected": float(clients["connected_clients"]),
            "blocked": float(clients["blocked_clients"])}


def batches(client: redis.Redis, model_ids: list[str]) -> tuple[float, float]:
    """(forward passes, items) the workers counted for these models."""
    passes = items = 0.0
    for model_id in model_ids:
        raw = client.hgetall(f"atf:batches:{model_id}")
        passes += float(raw.get(b"batches", 0))
        items += float(raw.get(b"items", 0))
    return passes, items


def measure(c: Cluster, bodies: Path, clients: int, seconds: float, offset: int, model_ids: list[str]) -> dict:
    """One closed-loop level through the webapp: throughput, latency, CPU per part, Redis commands."""
    db = redis.Redis.from_url(c.redis_url)
    cpu0, redis0, batch0 = cpu_by_part(c), redis_counters(db), batches(db, model_ids)
    before = os.times()
    summary = run_wrk(c.url, bodies, clients, seconds, offset)
    after = os.times()
    cpu1, redis1, batch1 = cpu_by_part(c), redis_counters(db), batches(db, model_ids)
    duration = summary["duration_us"] / 1e6
    requests = summary["requests"]
    cores = {part: (cpu1[part] - cpu0[part]) / duration for part in cpu0}
    cores["wrk"] = ((after.children_user - before.children_user) + (after.children_system - before.children_system)
                    ) / duration
    passes, items = batch1[0] - batch0[0], batch1[1] - batch0[1]
    return {
        "clients": clients, "requests": requests, "rps": requests / duration,
        "errors": summary["socket_errors"] + summary["non_2xx"],
        "p50_ms": summary["p50_us"] / 1000, "p99_ms": summary["p99_us"] / 1000,
        "mean_batch": items / passes if passes else 0.0,
        "cores": cores,
        "redis_cmds_per_s": (redis1["commands"] - redis0["commands"]) / duration,
        "redis_cmds_per_request": (redis1["commands"] - redis0["commands"]) / max(requests, 1),
        "redis_clients": redis1["connected"], "redis_blocked": redis1["blocked"],
        "machine_load": os.getloadavg()[0],
    }


def idle(c: Cluster, seconds: float) -> dict:
    """Redis's CPU and command rate with no request at all: the cost of watching the queues."""
    db = redis.Redis.from_url(c.redis_url)
    cpu0, redis0, started = cpu_by_part(c), redis_counters(db), time.monotonic()
    time.sleep(seconds)
    cpu1, redis1, elapsed = cpu_by_part(c), redis_counters(db), time.monotonic() - started
    return {"cores": {part: (cpu1[part] - cpu0[part]) / elapsed for part in cpu0},
            "redis_cmds_per_s": (redis1["commands"] - redis0["commands"]) / elapsed,
            "redis_clients": redis1["connected"], "redis_blocked": redis1["blocked"]}


def say(text: str, started: float) -> None:
    print(f"{time.monotonic() - started:6.0f}s  {text}", flush=True)


def scaling_curve(model_dir: Path, work: Path, args, started: float) -> list[dict]:
    bodies = write_bodies(work / "bodies.jsonl", ["standin"])
    rows = []
    settings = dict(max_batch_size=args.max_batch, max_wait_ms=args.max_wait_ms)
    with Cluster(workers=1, model_dir=model_dir, preload="standin", prefix="atfb", run_dir=work / "run",
                 **settings) as c:
        say(f"cluster {c.tag} up on {c.state.subnet}: Redis, webapp, 1 worker", started)
        run_wrk(c.url, bodies, 8, 3, 0)  # warm-up: connections, threads
        for n in args.workers:
            while len(c.worker_hosts()) < n:
                c.add_worker(wait=False)
            for role in c.worker_hosts():
                c.wait_worker(role)
            row = measure(c, bodies, CLIENTS_PER_WORKER * n, args.duration, 1000 * n, ["standin"])
            row["workers"] = n
            row["forward_s"] = args.forward_ms / 1000
            rows.append(row)
            one = rows[0]["rps"]
            row["efficiency"] = row["rps"] / (n * one)
            say(f"{n} worker(s): {row['rps']:6.1f} req/s, efficiency {row['efficiency']:.2f}, p50 "
                f"{row['p50_ms']:.0f} ms, mean batch {row['mean_batch']:.1f}, cores " +
                ", ".join(f"{k} {v:.2f}" for k, v in row["cores"].items()), started)
    return rows


def many_queues(model_dir: Path, work: Path, args, started: float) -> dict:
    """4 workers with 1 queue each, then 4 workers with MANY queues each: idle and loaded."""
    results = {}
    many = [f"q{i:02d}" for i in range(1, MANY + 1)]
    for label, served in (("1 queue", many[:1]), (f"{MANY} queues", many)):
        bodies = write_bodies(work / f"bodies-{len(served)}.jsonl", served)
        with Cluster(workers=4, model_dir=model_dir, preload=",".join(served), prefix="atfq",
                     run_dir=work / "run", max_batch_size=1, max_models_per_worker=MANY + 4,
                     ready_timeout=600) as c:
            say(f"cluster {c.tag}: 4 workers serving {len(served)} model(s) each", started)
            run_wrk(c.url, bodies, 4, 3, 0)
            rest = idle(c, args.idle)
            loaded = measure(c, bodies, args.many_clients, args.duration, 777, served)
            results[label] = {"queues_per_worker": len(served), "idle": rest, "load": loaded}
            say(f"{label} per worker: idle Redis {rest['cores']['redis']:.3f} cores, "
                f"{rest['redis_cmds_per_s']:.0f} cmd/s, {rest['redis_clients']:.0f} clients; loaded "
                f"{loaded['rps']:.1f} req/s, p50 {loaded['p50_ms']:.0f} ms, p99 {loaded['p99_ms']:.0f} ms, "
                f"Redis {loaded['cores']['redis']:.3f} cores, {loaded['redis_cmds_per_request']:.1f} cmd/request",
                started)
    return results


def report(curve: list[dict], queues: dict, args, when: str) -> str:
    one = curve[0]["rps"]
    ideal = args.max_batch / (args.forward_ms / 1000)
    at4 = next((r for r in curve if r["workers"] == 4), None)
    lines = [
        "## Scaling across hosts (bench/scaling.py)",
        "",
        f"`python -m bench.scaling` on {when}: {platform.node()}, {psutil.cpu_count()} cores "
        "(shared with whatever else ran: the machine's load average is in the table). Every process in a "
        "network namespace of its own (devtools/cluster.py): Redis, the webapp (gunicorn, its defaults), and one "
        f"Celery worker per host. Model: a stand-in whose every batch lasts {args.forward_ms:g} ms off the CPU "
        f"(model_store/standin.py), MAX_BATCH_SIZE={args.max_batch}: one worker serves at most {ideal:.0f} "
        f"requests/s, so eight workers need {8 * ideal:.0f} requests/s of the webapp and Redis and little "
        f"CPU of their own — chosen so that the 2 cores are not the limit. wrk, {CLIENTS_PER_WORKER} clients per "
        f"worker, {args.duration:g} s per level, each request a different sentence, cache bypassed; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} for the workers. Efficiency is throughput ÷ "
        "(N × the one-worker throughput measured); × N ideal divides by N × MAX_BATCH_SIZE / batch time instead "
        "(a one-worker figure depressed by a busy moment makes efficiency exceed 1).",
        "",
        "| workers | clients | req/s | efficiency | × N ideal | p50 ms | p99 ms | mean batch | errors "
        "| cores: Redis · webapp · workers · wrk | Redis cmd/request | load avg |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in curve:
        cores = r["cores"]
        lines.append(
            f"| {r['workers']} | {r['clients']} | {r['rps']:.1f} | {r['rps'] / (r['workers'] * one):.2f} "
            f"| {r['rps'] / (r['workers'] * ideal):.2f} "
            f"| {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['mean_batch']:.2f} | {r['errors']} "
            f"| {cores['redis']:.2f} · {cores['webapp']:.2f} · {cores['workers']:.2f} · {cores['wrk']:.2f} "
            f"| {r['redis_cmds_per_request']:.1f} | {r['machine_load']:.1f} |")
    if at4 is not None:
        lines += ["", f"Target: efficiency ≥ 0.9 at 4 workers — measured **{at4['efficiency']:.2f}** "
                      f"({'met' if at4['efficiency'] >= 0.9 else 'missed'}); one worker {one:.1f} req/s of "
                      f"{ideal:.0f} possible ({one / ideal:.0%})."]
    lines += ["", *where_the_loss_is(curve, ideal)]
    if queues:
        lines += many_queues_report(queues)
    return "\n".join(lines) + "\n"


def where_the_loss_is(curve: list[dict], ideal: float) -> list[str]:
    """Where throughput went at the largest N: batch fill, time between batches, the parts' CPU."""
    last, first = curve[-1], curve[0]
    cores = psutil.cpu_count()
    total = sum(last["cores"].values())
    per_request = {k: 1000 * v / max(last["rps"], 1e-9) for k, v in last["cores"].items()}
    # A worker's batch rate against the stand-in's: the rest of each cycle is the worker's own time.
    cycle_ms = {r["workers"]: 1000 * r["workers"] * r["mean_batch"] / max(r["rps"], 1e-9) for r in curve}
    return [
        f"Where the loss is, at {last['workers']} workers: batches held {last['mean_batch']:.2f} items "
        f"(one worker: {first['mean_batch']:.2f}), and each worker finished one every "
        f"{cycle_ms[last['workers']]:.0f} ms (one worker: {cycle_ms[first['workers']]:.0f} ms; the stand-in "
        f"alone takes {1000 * first['forward_s']:.0f} ms). "
        f"The cluster's processes and wrk used {total:.2f} of the {cores} cores, per request: "
        f"{', '.join(f'{k} {v:.2f} ms' for k, v in per_request.items())} of CPU. What a batch takes beyond "
        "the stand-in's time is the worker's own work between batches (results stored, the next jobs started "
        "and fetched); it grows when the processes queue for the machine's cores (the load average counts "
        "other jobs too). CPU workers that share a machine's cores must run one intra-op thread each "
        "(OMP_NUM_THREADS=1, as here): with torch's default, a thread per core in every worker "
        "(`--omp-threads 0`), they spin-wait for one another and the workers' CPU, not the model, sets the "
        "throughput.",
        "",
    ]


def many_queues_report(queues: dict) -> list[str]:
    one, many = queues["1 queue"], queues[f"{MANY} queues"]
    lines = [
        f"### {MANY} models on 4 workers: the cost of many queues",
        "",
        "Each worker watches every queue it serves that a fetch emptied with a blocking `BLMOVE` on a connection "
        "of its own (tasks/sources.py), renewed every 2 s; a message wakes the worker's fetcher, whose script reads "
        "the queues that got one, and every queue once a second (kombu's priority lists, which the watchers do not "
        "see). 4 workers, MAX_BATCH_SIZE=1, stand-in models; under load the requests go to every model in turn.",
        "",
        "| queues per worker | idle: Redis cores | idle: Redis cmd/s | Redis clients (blocked) | loaded: req/s "
        "| p50 ms | p99 ms | loaded: Redis cores | Redis cmd/request | workers' cores |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (one, many):
        i, load = r["idle"], r["load"]
        lines.append(
            f"| {r['queues_per_worker']} | {i['cores']['redis']:.3f} | {i['redis_cmds_per_s']:.0f} "
            f"| {i['redis_clients']:.0f} ({i['redis_blocked']:.0f}) | {load['rps']:.1f} | {load['p50_ms']:.0f} "
            f"| {load['p99_ms']:.0f} | {load['cores']['redis']:.3f} | {load['redis_cmds_per_request']:.1f} "
            f"| {load['cores']['workers']:.2f} |")
    extra_idle = many["idle"]["redis_cmds_per_s"] - one["idle"]["redis_cmds_per_s"]
    watchers = 4 * (MANY - 1)
    per_queue = extra_idle / watchers if watchers else 0.0
    redis_ms = {k: 1000 * r["load"]["cores"]["redis"] / max(r["load"]["rps"], 1e-9) for k, r in queues.items()}
    ms_one, ms_many = redis_ms["1 queue"], redis_ms[f"{MANY} queues"]
    idle_cores = many["idle"]["cores"]["redis"] - one["idle"]["cores"]["redis"]
    lines += [
        "",
        "Redis counts the commands a script runs, and the fetch script reads four lists per queue it is asked "
        "(the plain one and kombu's three priority lists). So idle, each more queue a worker serves costs "
        f"{per_queue:.1f} commands/s (the {watchers} more cost {extra_idle:.0f}/s, {idle_cores:+.3f} of a core: "
        "the read once a second and the watcher's renewal) and a connection (blocked in `BLMOVE`); under load a "
        f"request cost {many['load']['redis_cmds_per_request']:.0f} Redis commands with {MANY} queues per worker "
        f"against {one['load']['redis_cmds_per_request']:.0f} with one, {ms_many:.2f} ms of Redis CPU against "
        f"{ms_one:.2f} ms; {many['load']['rps']:.1f} req/s against {one['load']['rps']:.1f}, p99 "
        f"{many['load']['p99_ms']:.0f} ms against {one['load']['p99_ms']:.0f} ms on the same 4 workers.",
        "",
        f"**Limit.** Redis is single-threaded: at {ms_many:.2f} ms of its CPU per request, {MANY} queues per worker "
        f"cap a cluster at about {1000 / ms_many:.0f} requests/s on one Redis core ({1000 / ms_one:.0f} with one "
        "queue per worker; a linear estimate from these figures, not measured there), whatever the number of "
        "workers. Connections grow as workers × queues per worker (one watcher each) on top of each process's "
        "own: keep that under Redis's `maxclients` (10000 by default). The default MAX_MODELS_PER_WORKER=4 "
        f"keeps both costs small; serving tens of models on every worker is what costs: place models on fewer "
        "workers each (placement), or run a Redis per group of models.",
    ]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts (default 1,2,4,8)")
    parser.add_argument("--duration", type=float, default=20, help="seconds per level (default 20)")
    parser.add_argument("--forward-ms", type=float, default=200, help="stand-in batch time (default 200)")
    parser.add_argument("--max-batch", type=int, default=4, help="MAX_BATCH_SIZE (default 4)")
    parser.add_argument("--max-wait-ms", type=float, default=5, help="MAX_WAIT_MS (default 5)")
    parser.add_argument("--many-forward-ms", type=float, default=50, help="batch time in the many-queues part")
    parser.add_argument("--many-clients", type=int, default=16, help="clients in the many-queues part")
    parser.add_argument("--idle", type=float, default=10, help="seconds of the idle measurement")
    parser.add_argument("--omp-threads", type=int, default=1,
                        help="OMP_NUM_THREADS of the workers (default 1; 0: torch's default, a thread per core)")
    parser.add_argument("--skip-many", action="store_true", help="only the scaling curve")
    parser.add_argument("--results", default=str(RESULTS), help="the markdown file to put the section in")
    args = parser.parse_args(argv)
    args.workers = [int(n) for n in args.workers.split(",")]
    problem = netns_allowed()
    if problem or not shutil.which("wrk"):
        print(problem or "bench.scaling needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    # Every process inherits it: one intra-op thread per worker. Eight CPU workers on two cores
    # with a thread per core each spin-wait (OpenMP) for one another, and a GPU worker's forward
    # needs no CPU threads; the webapp and Redis do not use them.
    if args.omp_threads:
        os.environ["OMP_NUM_THREADS"] = str(args.omp_threads)
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    work = Path(tempfile.mkdtemp(prefix="atf-scaling-"))
    try:
        build_models(work / "models", args.forward_ms, args.many_forward_ms)
        say("stand-in models built", started)
        curve = scaling_curve(work / "models", work, args, started)
        (OUT / "scaling.json").write_text(json.dumps({"curve": curve}, indent=1))
        queues = {} if args.skip_many else many_queues(work / "models", work, args, started)
        (OUT / "scaling.json").write_text(json.dumps({"when": when, "args": vars(args), "curve": curve,
                                                      "many_queues": queues}, indent=1))
        section = report(curve, queues, args, when)
        results = Path(args.results)
        results.write_text(with_section(results.read_text() if results.exists() else "", section))
        say(f"wrote the scaling section of {results} and {OUT / 'scaling.json'}", started)
        print()
        print(section)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
