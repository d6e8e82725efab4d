"""The response cache through HTTP: hit latency per level, and throughput with repeats.

Part of `python -m bench`. Latency is measured by one client against a
webapp of one process (level 1 lives in each process: with several, a new
connection may meet one that has not seen the text): first each text is
computed, then asked again (level 1 hits), then the webapp is restarted
and asked again (level 2 hits: its memory is empty, Redis is not).
Throughput: wrk at 64 clients on a stream where 30% of the requests
repeat an earlier text, with the cache on and bypassed.
"""

from __future__ import annotations

import http.client
import json
import random
import statistics
import time
from pathlib import Path

from devtools.processes import Webapp, Worker, service_env

REPEAT_RATIO = 0.30
# minilm's embedding: the floor the hits are set against answers one as long.
MINILM_FLOATS = 384


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1)))]


def _connect(url: str) -> http.client.HTTPConnection:
    host, port = url.split("//", 1)[1].split(":")
    return http.client.HTTPConnection(host, int(port), timeout=120)


def _ask(conn: http.client.HTTPConnection, text: str) -> tuple[float, dict]:
    body = json.dumps({"model_id": "minilm", "inputs": text})
    started = time.perf_counter()
    conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    elapsed = (time.perf_counter() - started) * 1000
    if response.status != 200:
        raise RuntimeError(f"/predict answered {response.status}: {data[:200]!r}")
    return elapsed, json.loads(data)


def _latencies(url: str, texts: list[str], expect: str) -> dict:
    conn = _connect(url)
    levels, times = [], []
    for text in texts:
        elapsed, body = _ask(conn, text)
        levels.append(body.get("timings", {}).get("cache") if body.get("cached") else "miss")
        times.append(elapsed)
    conn.close()
    hits = [t for t, level in zip(times, levels) if level == expect]
    if not hits:
        raise RuntimeError(f"expected {expect} answers, got {sorted(set(levels))}")
    return {"requests": len(texts), "hits": len(hits), "p50_ms": statistics.median(hits),
            "p99_ms": _percentile(hits, 0.99)}


def _floor_latency(env: dict, work: Path, texts: list[str]) -> dict:
    """The same client and bodies against the HTTP floor (bench/floor.py), answering as many floats as minilm."""
    floor = Webapp(dict(env, FLOOR_FLOATS=str(MINILM_FLOATS)), work, "--workers", "1", app="bench.floor:app",
                   ready_path="/health/live").wait_ready()
    try:
        conn = _connect(floor.url)
        times = [_ask(conn, text)[0] for text in texts]
        conn.close()
    finally:
        floor.stop()
    return {"requests": len(texts), "p50_ms": statistics.median(times), "p99_ms": _percentile(times, 0.99)}


def repeat_stream(texts: list[str], length: int, ratio: float = REPEAT_RATIO, seed: int = 0) -> list[str]:
    """A request stream where `ratio` of the requests repeat an earlier text."""
    rng = random.Random(seed)
    fresh = iter(texts)
    stream: list[str] = []
    for _ in range(length):
        text = next(fresh, None) if not (stream and rng.random() < ratio) else None
        stream.append(text if text is not None else rng.choice(stream))
    return stream


def measure_cache(redis_url: str, model_dir: Path, texts: list[str], work: Path, run_wrk, seconds: float,
                  progress) -> dict:
    env = service_env(redis_url, model_dir, preload_models="minilm")
    worker = Worker("bench-cache", env, work).wait_ready()
    webapp = Webapp(env, work, "--workers", "1").wait_ready()
    sample = texts[:300]
    try:
        _latencies(webapp.url, sample, "miss")  # compute: level 2 gets them, so does this process's level 1
        l1 = _latencies(webapp.url, sample, "l1")
        webapp.stop()
        floor = _floor_latency(env, work, sample)
        webapp = Webapp(env, work, "--workers", "1").wait_ready()
        l2 = _latencies(webapp.url, sample, "l2")
        progress(f"cache hits: level 1 p50 {l1['p50_ms']:.2f} ms, p99 {l1['p99_ms']:.2f} ms; "
                 f"level 2 p50 {l2['p50_ms']:.2f} ms, p99 {l2['p99_ms']:.2f} ms; the HTTP floor p50 "
                 f"{floor['p50_ms']:.2f} ms")
        # Fresh texts for the stream: the other sentences, then pairs of them.
        rest = texts[300:]
        rest += [f"{a} {b}" for a, b in zip(rest, rest[1:])]
        stream = repeat_stream(rest, int(len(rest) / (1 - REPEAT_RATIO)) - 1)
        rows = {}
        for name, use_cache in (("cache on", True), ("cache bypassed", False)):
            bodies = work / f"stream-{use_cache}.jsonl"
            with open(bodies, "w") as f:
                for text in stream:
                    f.write(json.dumps({"model_id": "minilm", "inputs": text,
                                        "options": {"use_cache": use_cache}}) + "\n")
            # a fresh webapp and fresh texts (offset) for each, so neither starts warm
            webapp.stop()
            webapp = Webapp(env, work).wait_ready()
            offset = 0 if use_cache else len(stream) // 2
            summary, _ = run_wrk(webapp.url, bodies, 64, seconds, offset)
            rows[name] = {"rps": summary["requests"] / (summary["duration_us"] / 1e6),
                          "p50_ms": summary["p50_us"] / 1000, "p99_ms": summary["p99_us"] / 1000,
                          "errors": summary["socket_errors"] + summary["non_2xx"]}
            progress(f"{int(REPEAT_RATIO * 100)}% repeats, 64 clients, {name}: {rows[name]['rps']:.1f} req/s, "
                     f"p50 {rows[name]['p50_ms']:.1f} ms")
        return {"l1": l1, "l2": l2, "floor": floor, "repeats": rows, "repeat_ratio": REPEAT_RATIO}
    finally:
        webapp.stop()
        worker.stop()


def report(cache: dict) -> list[str]:
    l1, l2, floor, rows = cache["l1"], cache["l2"], cache["floor"], cache["repeats"]
    on, off = rows["cache on"], rows["cache bypassed"]
    beyond = l1["p50_ms"] - floor["p50_ms"]
    return [
        "## Response cache",
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| level 1 (in-process) hit p50 ≤ 1 ms (SPEC §11: ≤ 2 ms) | p50 {l1['p50_ms']:.2f} ms, "
        f"p99 {l1['p99_ms']:.2f} ms ({l1['hits']}/{l1['requests']} hits) | "
        f"{'met' if l1['p50_ms'] <= 1 else 'missed'} (SPEC's: {'met' if l1['p50_ms'] <= 2 else 'missed'}) |",
        f"| level 2 (Redis) hit p50 ≤ 5 ms | p50 {l2['p50_ms']:.2f} ms, p99 {l2['p99_ms']:.2f} ms "
        f"({l2['hits']}/{l2['requests']} hits) | {'met' if l2['p50_ms'] <= 5 else 'missed'} |",
        "",
        "Hit latency: one client, a webapp of one process, through HTTP `/predict` (client clock: Python's "
        "`http.client`, whose own work is in every figure). The same client sent the same bodies to the HTTP "
        f"floor (bench/floor.py, Flask with no work, one process, answering {MINILM_FLOATS} floats as minilm "
        f"does, through Flask's own JSON): p50 {floor['p50_ms']:.2f} ms; a level-1 hit took "
        f"{abs(beyond):.2f} ms {'more' if beyond >= 0 else 'less'}: the request's checks, the cache keys and "
        "the lookup and the metrics, less the floor's JSON encoding (the cache keeps each output encoded); "
        "the access line is written after the answer is sent. "
        f"Throughput: wrk, 64 clients, a stream where {int(cache['repeat_ratio'] * 100)}% of the requests "
        "repeat an earlier sentence:",
        "",
        "| | req/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|",
        f"| cache on | {on['rps']:.1f} | {on['p50_ms']:.1f} | {on['p99_ms']:.1f} | {on['errors']} |",
        f"| cache bypassed (`use_cache: false`) | {off['rps']:.1f} | {off['p50_ms']:.1f} | {off['p99_ms']:.1f} "
        f"| {off['errors']} |",
        f"| ratio | **{on['rps'] / off['rps']:.2f}×** | | | |",
        "",
    ]
