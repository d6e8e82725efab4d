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
    out = ["", "## Soak", "", f"{row['fault']}.", "",
           f"- Answers: {', '.join(f'{k}: {v}' for k, v in sorted(soak['statuses'].items()))}; "
           f"**{soak['errors_5xx']} answered 5xx**.",
           f"- Jobs accepted: {row['accepted']}; succeeded {row['succeeded']}, failed {failed(row)} "
           f"(cancelled jobs are `JobCancelled`), lost or stuck {row['lost']}, run twice {row['run_twice']}.",
           "", f"| process | RSS at minute 1 | RSS at minute {soak['minutes']} | growth |", "|---|---:|---:|---:|"]
    for name, first in soak["rss_first"].items():
        last = soak["rss_last"].get(name)
        if last is None:
            continue
        out.append(f"| {name} | {first / 2**20:.1f} MiB | {last / 2**20:.1f} MiB | "
                   f"{100 * soak['rss_growth'][name]:+.1f} % |")
    keys = soak["redis_keys"]
    memory = soak["redis_used_memory"]
    out += ["", f"Redis keys at the end of each minute (RESULT_TTL = CACHE_TTL = {soak['ttl_s']} s): "
            + ", ".join(map(str, keys)) + f"; its dataset (`used_memory`) {memory[0] / 1e6:.1f} MB at minute 1, "
            f"{memory[-1] / 1e6:.1f} MB at the end ({100 * (memory[-1] - memory[0]) / memory[0]:+.1f} %). "
            "The count levels off once the first keys expire: it is bounded by the TTLs (see README, "
            "\"Redis memory\"). Redis's RSS also holds what its allocator keeps after a peak and its "
            "append-only-file buffers: the growth that counts for it is its dataset's."]
    minutes = soak.get("rss_by_minute")
    if minutes:
        out += ["", "RSS every minute (MiB), the third model unloaded at each sample:", "",
                "| process | " + " | ".join(str(i + 1) for i in range(soak["minutes"])) + " |",
                "|---|" + "---:|" * soak["minutes"]]
        for name, values in minutes.items():
            out.append(f"| {name} | " + " | ".join("" if v is None else f"{v / 2**20:.0f}" for v in values) + " |")
    return out


def render(rows: list[dict]) -> str:
    faults = sorted((r for r in rows if "soak" not in r), key=lambda r: (BROKER_ORDER.get(r["broker"], 9), r["fault"]))
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
