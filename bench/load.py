"""Closed-loop HTTP load against a running API: throughput, latency, batch sizes.

    python -m bench.load --url http://localhost:8000 --concurrency 1,8,32 --requests 256

Each client sends unique sentences of real English text (from CPython's
pydoc_data.topics) to POST /predict, one after the other. Batch sizes are
read from the workers' counters on /metrics before and after each level.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pydoc_data.topics import topics

import requests


def sentences(limit: int = 20_000) -> list[str]:
    """Unique sentences of 40-300 characters from the Python docs."""
    text = " ".join(topics.values())
    seen, out = set(), []
    for s in re.split(r"(?<=[.!?])\s+", text):
        s = " ".join(s.split())
        if 40 <= len(s) <= 300 and s not in seen:
            seen.add(s)
            out.append(s)
    return out[:limit]


def batch_counters(url: str, model_id: str) -> tuple[float, float]:
    """(forward passes, items) the workers report for `model_id`."""
    text = requests.get(url + "/metrics", timeout=10).text
    def value(name):
        m = re.search(rf'^{name}\{{model_id="{re.escape(model_id)}"\}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0
    return value("atf_batches_total"), value("atf_batch_items_total")


def run_level(url: str, model_id: str, texts: list[str], concurrency: int, total: int,
              parameters: dict | None = None) -> dict:
    """`total` requests from `concurrency` clients; returns the level's figures."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    cursor = iter(range(total))

    def client():
        nonlocal errors
        with requests.Session() as session:
            while True:
                with lock:
                    i = next(cursor, None)
                if i is None:
                    return
                body = {"model_id": model_id, "inputs": texts[i % len(texts)]}
                if parameters:
                    body["parameters"] = parameters
                started = time.perf_counter()
                response = session.post(url + "/predict", json=body, timeout=120)
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        errors += 1

    passes0, items0 = batch_counters(url, model_id)
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(client)
    wall = time.perf_counter() - started
    passes1, items1 = batch_counters(url, model_id)
    latencies.sort()
    passes = passes1 - passes0
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan"),
        "mean_batch": (items1 - items0) / passes if passes else float("nan"),
        "passes": passes,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://localhost:8000")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=256, help="requests per level")
    args = parser.parse_args(argv)
    texts = sentences()
    offset = 0
    print("| clients | requests | errors | req/s | p50 ms | p99 ms | mean batch | forward passes |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for level in [int(c) for c in args.concurrency.split(",")]:
        # Fresh sentences per level, so nothing is ever repeated.
        chunk = texts[offset:offset + args.requests]
        offset += args.requests
        r = run_level(args.url, args.model, chunk, level, args.requests)
        print(f"| {r['concurrency']} | {r['requests']} | {r['errors']} | {r['rps']:.1f} | {r['p50_ms']:.1f} "
              f"| {r['p99_ms']:.1f} | {r['mean_batch']:.1f} | {r['passes']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
