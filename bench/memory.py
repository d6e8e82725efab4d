"""`python -m bench.memory`: Redis memory per job, by kind of key, and at steady state.

One run: a private Redis, one worker serving `minilm` and the webapp under
gunicorn with its default TTLs. N POST /predict (each answered 200), then,
with the worker paused, N POST /jobs (their messages wait in the queue),
then the worker resumes (they are held, run, stored). Every request is a
different sentence of real English (CPython's pydoc_data.topics), one
input per job. Then MEMORY USAGE of every key a job leaves: its record,
Celery's result, its cache entry; and of a message queued and held. The
same stored results and cache entries re-encoded as before float32 outputs
(float64 reprs, what `.tolist()` gave) are measured in a scratch key, so
the saving is a ratio from one run. Writes bench/MEMORY.md: the table, the
steady-state formula and a maxmemory size with these numbers plugged in.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
import redis
import requests

from bench.__main__ import cpu_model
from bench.harness import Progress
from bench.load import sentences
from common import protocol
from common.cache_keys import CACHE_PREFIX
from common.deliveries import DELIVERIES_PREFIX
from common.settings import (
    DEFAULT_CACHE_TTL,
    DEFAULT_DELIVERED_RESULT_TTL,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_DEPTH,
    DEFAULT_RESULT_TTL,
    DEFAULT_WORKER_PREFETCH,
)
from devtools.processes import PYTHON, ROOT, Webapp, Worker, service_env
from devtools.redis_server import EmbeddedRedis

MODEL = "minilm"
CLIENTS = 8
# The worker is paused while the /jobs messages are queued: a slow heartbeat
# keeps it alive meanwhile (three missed beats = dead). It changes no key's size.
HEARTBEAT_S = 5
# Headroom over the steady state for maxmemory: bursts above the hourly rate,
# Redis's own bookkeeping (expiry table, hash-table growth), client buffers.
HEADROOM = 1.5


def post_all(url: str, path: str, texts: list[str], expect: int) -> list[str]:
    """POST one text per request from CLIENTS threads; the job ids, in order."""
    local = threading.local()

    def one(text: str) -> str:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        response = local.session.post(url + path, json={"model_id": MODEL, "inputs": text}, timeout=120)
        if response.status_code != expect:
            raise RuntimeError(f"{path} answered {response.status_code}, not {expect}: {response.text[:300]}")
        return response.json()["job_id"]

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(one, texts))


def usage(client: redis.Redis, keys: list) -> list[int]:
    """MEMORY USAGE of each key, every element counted (SAMPLES 0)."""
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.memory_usage(key, samples=0)
        return [int(v or 0) for v in pipe.execute()]


def scratch_usage(client: redis.Redis, key: str, value: bytes, ttl: int) -> int:
    """MEMORY USAGE of `value` stored as the string `key` is (same name length, same TTL)."""
    scratch = "~" + key[1:]
    with client.pipeline(transaction=True) as pipe:
        pipe.set(scratch, value, ex=ttl)
        pipe.memory_usage(scratch, samples=0)
        pipe.delete(scratch)
        return int(pipe.execute()[1])


def as_float64(value):
    """An output as stored before: float32 values widened to Python floats (what `.tolist()` gave)."""
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
        return np.asarray(value, dtype=np.float32).tolist()
    if isinstance(value, list):
        return [as_float64(v) for v in value]
    return value


def scan(client: redis.Redis, pattern: str) -> list[bytes]:
    return list(client.scan_iter(match=pattern, count=1000))


def measure(client: redis.Redis, predict_ids: list[str], job_ids: list[str]) -> dict:
    """Bytes per key by kind, now and re-encoded as before; TTLs; keys of other kinds."""
    out: dict = {"kinds": {}}
    for group, ids in (("predict", predict_ids), ("jobs", job_ids)):
        records = [protocol.job_key(i) for i in ids]
        results = [protocol.result_key(i) for i in ids]
        with client.pipeline(transaction=False) as pipe:
            for key in results:
                pipe.get(key)
            for key in results + records:
                pipe.ttl(key)
            fetched = pipe.execute()
        values, ttls = fetched[:len(ids)], fetched[len(ids):]
        before = []
        for key, value in zip(results, values):
            doc = orjson.loads(value)
            doc["result"] = as_float64(doc["result"])
            before.append(scratch_usage(client, key, orjson.dumps(doc), DEFAULT_RESULT_TTL))
        out["kinds"][f"record_{group}"] = {"now": usage(client, records), "before": None}
        out["kinds"][f"result_{group}"] = {"now": usage(client, results), "before": before,
                                           "value_bytes": [len(v) for v in values]}
        out[f"ttl_{group}"] = {"result": max(ttls[:len(ids)]), "record": max(ttls[len(ids):])}
    cache_keys = scan(client, CACHE_PREFIX + "*")
    values = client.mget(cache_keys)
    before = [scratch_usage(client, key.decode(), orjson.dumps(as_float64(orjson.loads(v))), DEFAULT_CACHE_TTL)
              for key, v in zip(cache_keys, values)]
    out["kinds"]["entry"] = {"now": usage(client, cache_keys), "before": before,
                             "value_bytes": [len(v) for v in values]}
    per_job = (protocol.JOB_KEY_PREFIX, "celery-task-meta-", CACHE_PREFIX)
    others: dict[str, int] = {}
    for key in client.scan_iter(count=1000):
        name = key.decode()
        if not name.startswith(per_job):
            others[name] = client.ttl(name)
    out["others"] = others
    return out


def held_peak(client: redis.Redis, done, timeout: float = 300.0) -> tuple[int, int]:
    """(messages, bytes) of the fullest deliveries hash seen until `done()`: what a held message costs."""
    best = (0, 0)
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError("the queued jobs did not finish in time")
        for key in scan(client, DELIVERIES_PREFIX + "*"):
            with client.pipeline(transaction=True) as pipe:  # one moment: count and size agree
                pipe.hlen(key)
                pipe.memory_usage(key, samples=0)
                held, size = pipe.execute()
            if held and held > best[0]:
                best = (int(held), int(size or 0))
        time.sleep(0.005)
    return best


def mean(values) -> float:
    return statistics.fmean(values) if values else 0.0


def human(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def steady_state(rate: float, result_life: float, record: float, result: float, entries: float,
                 entry: float) -> tuple[float, float]:
    """(keys, bytes) alive at `rate` jobs/s: each job's keys live their TTL (Little's law)."""
    keys = rate * (2 * result_life + DEFAULT_CACHE_TTL * entries)
    size = rate * (result_life * (record + result) + DEFAULT_CACHE_TTL * entries * entry)
    return keys, size


def report(m: dict, args, started: str, server_version: str) -> str:
    k = m["kinds"]
    rec = mean(k["record_predict"]["now"] + k["record_jobs"]["now"])
    res_now = mean(k["result_predict"]["now"] + k["result_jobs"]["now"])
    res_before = mean(k["result_predict"]["before"] + k["result_jobs"]["before"])
    ent_now, ent_before = mean(k["entry"]["now"]), mean(k["entry"]["before"])
    res_value = mean(k["result_predict"]["value_bytes"] + k["result_jobs"]["value_bytes"])
    ent_value = mean(k["entry"]["value_bytes"])
    total_now, total_before = rec + res_now + ent_now, rec + res_before + ent_before
    jobs = 2 * args.jobs
    rate, d, t_r, t_c = args.rate, DEFAULT_DELIVERED_RESULT_TTL, DEFAULT_RESULT_TTL, DEFAULT_CACHE_TTL
    lines = [
        "# Redis memory per job",
        "",
        f"`python -m bench.memory --jobs {args.jobs}` on {started}: {platform.node()}, {cpu_model()}, "
        f"{server_version}; model `{MODEL}` (a 384-float32 sentence embedding per input), one input per job, "
        f"default settings (RESULT_TTL={t_r}, CACHE_TTL={t_c}, DELIVERED_RESULT_TTL={d}). "
        f"{args.jobs} POST /predict (all answered 200) and {args.jobs} POST /jobs, each a different sentence of "
        "`pydoc_data.topics`. Bytes are Redis's `MEMORY USAGE … SAMPLES 0` (value, key name and entry); "
        "*before* is the same stored result or cache entry re-encoded with float64 reprs, as stored before "
        "outputs were float32 arrays, and measured in a scratch key of the same name length.",
        "",
        "## Per job, keys that live a TTL",
        "",
        "| key | what | keys measured | JSON bytes now | bytes before | bytes now | now / before |",
        "|---|---|---:|---:|---:|---:|---:|",
        f"| `atf:job:<id>` | job record (hash) | {jobs} | – | {rec:,.0f} | {rec:,.0f} | 1.00 |",
        f"| `celery-task-meta-<id>` | Celery result (JSON) | {jobs} | {res_value:,.0f} | {res_before:,.0f} "
        f"| {res_now:,.0f} | {res_now / res_before:.2f} |",
        f"| `atf:cache:<sha256>` | cache entry per computed item (JSON) | {len(k['entry']['now'])} "
        f"| {ent_value:,.0f} | {ent_before:,.0f} | {ent_now:,.0f} | {ent_now / ent_before:.2f} |",
        f"| **a job of one item** | record + result + entry | | | **{total_before:,.0f}** | **{total_now:,.0f}** "
        f"| **{total_now / total_before:.2f}** |",
        "",
        f"TTLs read after the run: results of /predict {m['ttl_predict']['result']} s, their records "
        f"{m['ttl_predict']['record']} s (DELIVERED_RESULT_TTL); of /jobs {m['ttl_jobs']['result']} s and "
        f"{m['ttl_jobs']['record']} s (RESULT_TTL).",
        "",
        f"Cross-check: Redis's `used_memory` grew {human(m['used_delta'])} over the {jobs} jobs, "
        f"{m['used_delta'] / jobs:,.0f} bytes per job against {total_now:,.0f} by MEMORY USAGE; the "
        "difference is Redis's bookkeeping (its expiry table, hash-table growth) and buffers.",
        "",
        "## Per job, while it waits (no TTL)",
        "",
        "| key | what | bytes per message |",
        "|---|---|---:|",
        f"| `infer.{MODEL}` | queued message (list element; {m['queued'][0]} queued) | "
        f"{m['queued'][1] / max(m['queued'][0], 1):,.0f} |",
        f"| `atf:deliveries:<holder>` | message held by a worker (hash field; peak {m['held'][0]} held) | "
        f"{m['held'][1] / max(m['held'][0], 1):,.0f} |",
        "",
        "Other keys after the run, none per job: "
        + ", ".join(f"`{name}`" + (f" (TTL {ttl} s)" if ttl >= 0 else "") for name, ttl in sorted(m["others"].items()))
        + ".",
        "",
        "## Steady state",
        "",
        "A job's keys live their TTL, so at a steady rate `r` of jobs per second Redis holds",
        "",
        "    keys  ≈ r × (2 × L + CACHE_TTL × e)",
        "    bytes ≈ r × (L × (record + result) + CACHE_TTL × e × entry)",
        "",
        "where `L` is DELIVERED_RESULT_TTL for a job whose POST /predict answered 200 (the webapp shortens its "
        "result and record once it has answered) and RESULT_TTL for any other (POST /jobs, a /predict answered "
        "202: its client polls), and `e` is the cache entries a job writes: its computed items that were not "
        "cached yet (0 with `use_cache: false` or sampled generation; below 1 per item when inputs repeat within "
        "CACHE_TTL). `r` is the peak rate held over the longest TTL (an hour), not a daily mean.",
        "",
        f"With the numbers measured above, at r = {rate:g} jobs/s of one item each (e = 1):",
        "",
        "| traffic | keys before | keys now | bytes before | bytes now | now / before |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, life in (("all POST /predict, answered 200", d), ("all POST /jobs (or /predict answered 202)", t_r)):
        keys_now, now = steady_state(rate, life, rec, res_now, 1, ent_now)
        keys_before, before = steady_state(rate, t_r, rec, res_before, 1, ent_before)  # no delivered TTL then
        lines.append(f"| {name} | {keys_before / 1e6:.2f} M | {keys_now / 1e6:.2f} M | {human(before)} "
                     f"| {human(now)} | {now / before:.2f} |")
    queued_msg = m["queued"][1] / max(m["queued"][0], 1)
    held_msg = m["held"][1] / max(m["held"][0], 1)
    _, worst = steady_state(rate, t_r, rec, res_now, 1, ent_now)
    queues = DEFAULT_MAX_QUEUE_DEPTH * queued_msg
    # A worker holds up to WORKER_PREFETCH jobs in its batcher, plus the finished ones its reporter has
    # not acknowledged yet (about a batch).
    held_jobs = DEFAULT_WORKER_PREFETCH + DEFAULT_MAX_BATCH_SIZE
    held = held_jobs * held_msg
    size = HEADROOM * worst + queues + held
    lines += [
        "",
        "The queues and held deliveries have no TTL; they are bounded by the settings, not by time:",
        f"at most MAX_QUEUE_DEPTH × message per model queue ({DEFAULT_MAX_QUEUE_DEPTH:,} × "
        f"{queued_msg:,.0f} B = {human(queues)} for these one-sentence jobs; a message grows with its inputs) "
        f"and about (WORKER_PREFETCH + MAX_BATCH_SIZE) × message per worker: it holds WORKER_PREFETCH jobs in "
        f"its batcher plus the finished ones not acknowledged yet ({m['held'][0]} at the peak here; "
        f"{held_jobs} × {held_msg:,.0f} B = {human(held)}).",
        "",
        "## maxmemory",
        "",
        f"    maxmemory ≥ {HEADROOM:g} × r_peak × (L × (record + result) + CACHE_TTL × e × entry)",
        "                + models × MAX_QUEUE_DEPTH × queued message",
        "                + workers × (WORKER_PREFETCH + MAX_BATCH_SIZE) × held message",
        "                + a few MB (registry, statistics, the last DEAD_LETTERS_KEPT unreadable messages, "
        "client buffers)",
        "    maxmemory-policy noeviction",
        "",
        f"Here, with r = {rate:g} jobs/s all through POST /jobs (L = RESULT_TTL, the larger), one model and one "
        f"worker: {HEADROOM:g} × {human(worst)} + {human(queues)} + {human(held)} ≈ **{human(size)}**. "
        f"The factor {HEADROOM:g} "
        "covers bursts above the hourly rate and Redis's bookkeeping beyond MEMORY USAGE (the cross-check above). "
        "The host needs more than maxmemory: allocator fragmentation, and copy-on-write during AOF rewrites.",
        "",
        "- `noeviction`: the queues (`infer.*`), held deliveries (`atf:deliveries:*`), the registry and placement "
        "keys have no TTL; an `allkeys-*` policy may evict them, and with them accepted jobs. A `volatile-*` policy "
        "evicts only keys with a TTL, but those are the records and results of accepted jobs (a queued job's "
        "record, a /jobs result not yet polled: its client gets 404) and the reaper's tombstones.",
        "- When full, Redis refuses writes (`OOM command not allowed`, redis-py's `OutOfMemoryError`): POST /predict "
        "and /jobs answer 503 `broker_unavailable` and queue nothing; a worker keeps retrying to store its "
        "results, its messages held, not acknowledged. EXPIRE and DEL still run, so keys keep expiring and "
        "delivered results keep being shortened until memory is free again.",
        "",
    ]
    return "\n".join(lines)


def run(args, progress) -> str:
    texts = sentences()
    if len(texts) < 2 * args.jobs + 1:
        raise SystemExit(f"only {len(texts)} distinct sentences; use --jobs {len(texts) // 2 - 1} or fewer")
    predict_texts, job_texts = texts[1:args.jobs + 1], texts[args.jobs + 1:2 * args.jobs + 1]
    work = Path(tempfile.mkdtemp(prefix="atf-memory-"))
    try:
        model_dir = Path(args.model_dir) if args.model_dir else work / "models"
        if not (model_dir / MODEL / "config.json").exists():
            subprocess.run([PYTHON, "-m", "model_store", "build-demo", MODEL], cwd=ROOT, check=True,
                           env=dict(os.environ, MODEL_DIR=str(model_dir)), stdout=subprocess.DEVNULL)
        progress(f"model {MODEL} in {model_dir}")
        with EmbeddedRedis() as server:
            client = redis.Redis.from_url(server.url)
            info = client.info("server")
            server_version = (f"valkey {info['valkey_version']}" if "valkey_version" in info
                              else f"Redis {info['redis_version']}")
            env = service_env(server.url, model_dir, preload_models=MODEL, heartbeat_s=HEARTBEAT_S)
            worker = Worker("bench-memory", env, work).wait_ready()
            webapp = Webapp(env, work).wait_ready()
            try:
                post_all(webapp.url, "/predict", texts[:1], 200)  # warm-up: connections, threads
                used_before = client.info("memory")["used_memory"]
                progress(f"{server_version}, worker and webapp ready")
                predict_ids = post_all(webapp.url, "/predict", predict_texts, 200)
                progress(f"{len(predict_ids)} POST /predict answered 200")
                os.kill(worker.process.pid, signal.SIGSTOP)  # messages stay in the queue
                try:
                    job_ids = post_all(webapp.url, "/jobs", job_texts, 202)
                    queue = protocol.queue_for(MODEL)
                    queued = (client.llen(queue), usage(client, [queue])[0])
                finally:
                    os.kill(worker.process.pid, signal.SIGCONT)
                progress(f"{len(job_ids)} POST /jobs queued while the worker was paused: "
                         f"{queued[1] / max(queued[0], 1):,.0f} bytes per queued message")
                results = [protocol.result_key(i) for i in job_ids]
                held = held_peak(client, lambda: client.exists(*results) == len(results))
                progress(f"all {len(job_ids)} jobs stored; {held[1] / max(held[0], 1):,.0f} bytes per held message "
                         f"(peak {held[0]} held)")
                deadline = time.monotonic() + 10  # the webapp shortens delivered results every 0.5 s
                while client.ttl(protocol.result_key(predict_ids[-1])) > DEFAULT_DELIVERED_RESULT_TTL:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the delivered results' TTL was not shortened")
                    time.sleep(0.1)
                used_after = client.info("memory")["used_memory"]
                m = measure(client, predict_ids, job_ids)
                m.update(queued=queued, held=held, used_delta=used_after - used_before)
                progress(f"measured {sum(len(v['now']) for v in m['kinds'].values())} keys, and the same results "
                         "and entries re-encoded as float64")
            finally:
                webapp.stop()
                worker.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return report(m, args, started, server_version)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300, help="POST /predict and POST /jobs each (default 300)")
    parser.add_argument("--rate", type=float, default=100, help="jobs/s for the steady-state figures (default 100)")
    parser.add_argument("--model-dir", help="a MODEL_DIR that has minilm (default: build it in a temporary folder)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "MEMORY.md"), help="markdown report path")
    args = parser.parse_args(argv)
    progress = Progress(7)
    text = run(args, progress)
    Path(args.out).write_text(text)
    progress(f"wrote {args.out}")
    print()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
