"""Write RELIABILITY.md from the rows the fault suite recorded (`make faults` runs this).

    python -m tests.faults.report <rows folder> <output file>
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import psutil

BROKER_ORDER = {"redis": 0, "rabbitmq": 1}
# Rows in the order of the list: workers, messages, broker, clients, placement.
FAULT_ORDER = ("worker kill -9 (1 of 2", "worker SIGTERM", "burst", "poison job", "worker paused", "a live worker",
               "malformed", "Redis SIGTERM", "Redis kill", "RabbitMQ restart", "client", "webapp", "worker kill -9 and",
               "loading a 3rd")


def rank(row: dict) -> tuple:
    position = next((i for i, prefix in enumerate(FAULT_ORDER) if row["fault"].startswith(prefix)), len(FAULT_ORDER))
    return BROKER_ORDER.get(row["broker"], 9), position, row["fault"]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}, {cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, " \
           f"Python {platform.python_version()}"


def failed(row: dict) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(row["failed"].items())) or "0"


def fault_table(rows: list[dict]) -> list[str]:
    out = ["| fault | broker | jobs accepted | succeeded | failed (by type) | lost or stuck | run twice | "
           "late results dropped | s until every job final | what happened |",
           "|---|---|---:|---:|---|---:|---:|---:|---:|---|"]
    for r in rows:
        seconds = "" if r["seconds_to_final"] is None else f"{r['seconds_to_final']:.1f}"
        out.append(f"| {r['fault']} | {r['broker']} | {r['accepted']} | {r['succeeded']} | {failed(r)} | "
                   f"{r['lost']} | {r['run_twice']} | {r['late_dropped']} | {seconds} | {r['note']} |")
    return out


def soak_section(row: dict) -> list[str]:
    soak = row["soak"]
    out = ["", "## Soak", "", f"{row['fault']}, after {soak.get('warmup_s', 0):.0f} s of the same load "
           "(the warm-up).", "",
           f"- Answers: {', '.join(f'{k}: {v}' for k, v in sorted(soak['statuses'].items()))}; "
           f"**{soak['errors_5xx']} answered 5xx**.",
           f"- Jobs accepted: {row['accepted']}; succeeded {row['succeeded']}, failed {failed(row)} "
           f"(cancelled jobs are `JobCancelled`), lost or stuck {row['lost']}, run twice {row['run_twice']}.",
           ""]
    half = soak["minutes"] // 2
    if "rss_peaks" in soak:
        out += [f"| process | RSS peak, minutes 1–{half} | RSS peak, minutes {half + 1}–{soak['minutes']} | growth |",
                "|---|---:|---:|---:|"]
        for name, (early, later) in soak["rss_peaks"].items():
            out.append(f"| {name} | {early / 2**20:.1f} MiB | {later / 2**20:.1f} MiB | "
                       f"{100 * soak['rss_growth'][name]:+.1f} % |")
    keys = soak["redis_keys"]
    memory = soak["redis_used_memory"]
    answered = soak.get("answered_by_minute") or [0] * len(keys)
    out += ["", f"Redis, at the end of each minute (RESULT_TTL = CACHE_TTL = {soak['ttl_s']} s, so it holds what "
            "the last minute's requests left):", "",
            "| minute | " + " | ".join(str(i + 1) for i in range(len(keys))) + " |",
            "|---|" + "---:|" * len(keys),
            "| requests answered in the minute | " + " | ".join(map(str, answered)) + " |",
            "| keys | " + " | ".join(map(str, keys)) + " |",
            "| dataset (`used_memory`), MB | " + " | ".join(f"{m / 1e6:.1f}" for m in memory) + " |",
            "| keys per request | " + " | ".join(f"{k / max(a, 1):.2f}" for k, a in zip(keys, answered)) + " |",
            "| bytes per key (above the dataset before the load) | "
            + " | ".join(f"{b:.0f}" for b in soak.get("bytes_per_key", [])) + " |",
            "| the machine's load (1-minute average; 2 cores) | "
            + " | ".join(f"{v:.1f}" for v in soak.get("load_by_minute", [])) + " |",
            "", "Bounded by the TTLs (see README, \"Redis memory\"): keys and bytes follow the last minute's "
            "requests, not the time since the start. Redis's RSS also holds what its allocator keeps after a "
            "peak and its append-only-file buffers: the growth that counts for it is its dataset's."]
    minutes = soak.get("rss_by_minute")
    if minutes:
        warmup = soak.get("rss_warmup", {})
        out += ["", f"RSS (MiB) before the load, after the {soak.get('warmup_s', 0):.0f} s warm-up under the same "
                "load, then at each minute of the soak (the third model unloaded at each sample):", "",
                "| process | before | warmed up | " + " | ".join(str(i + 1) for i in range(soak["minutes"])) + " |",
                "|---|---:|---:|" + "---:|" * soak["minutes"]]
        for name, values in minutes.items():
            cells = list(warmup.get(name, [None, None])) + list(values)
            out.append(f"| {name} | " + " | ".join("" if v is None else f"{v / 2**20:.0f}" for v in cells) + " |")
    return out


def render(rows: list[dict]) -> str:
    faults = sorted((r for r in rows if "soak" not in r), key=rank)
    soaks = [r for r in rows if "soak" in r]
    lines = ["# Reliability", "",
             f"Written by `make faults` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: {machine()}. "
             "Every row is one fault provoked on real processes (tests/faults/): each job the API accepted "
             "is followed to its final state.", "",
             "- **lost or stuck**: accepted, and no final result when the test gave up waiting;",
             "- **run twice**: a result stored or published twice, or changed after it was first seen;",
             "- **late results dropped**: a second run a worker finished after another stored the job's "
             "result (a worker declared dead that was only paused); never stored, never seen by a client;",
             "- **s until every job final**: from the fault until the last accepted job had its result.", ""]
    lines += fault_table(faults)
    for row in soaks:
        lines += soak_section(row)
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    folder, target = Path(argv[1]), Path(argv[2])
    rows = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    if not rows:
        print(f"no fault rows in {folder}: nothing written", file=sys.stderr)
        return 1
    target.write_text(render(rows))
    print(f"wrote {target} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
