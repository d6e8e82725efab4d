"""The per-model statistics hash the workers keep in Redis and /metrics reads.

One hash per model (protocol.batch_stats_key): counters only, so any
number of workers add to it with HINCRBY and a scrape of any webapp
process reads the fleet's totals. The worker adds one batch's worth in
the pipeline that stores the batch's results (tasks/reporting.py); the
webapp turns the fields into Prometheus families (webapp/metrics.py).
This module is the one place that knows the field names.

Fields:
  batches, items, passes, forward_seconds   forward passes run, items in them, ...
  size:<n>                                  batches of exactly n items
  tokens, padded_tokens                     real tokens in batches, and their size padded to the longest
  failed:<type>                             jobs failed with that error type
  redelivered                               jobs started again after the worker running them died
  late_results                              results dropped because another worker stored one first
  <histogram>:le:<bound>, <histogram>:le:+Inf, <histogram>:sum, <histogram>:count
                                            a histogram's observations per bucket (not cumulative)
"""

from __future__ import annotations

import bisect
from collections import Counter

from common import protocol

# From the job's enqueue time (its record's created_at) to the start of its
# first batch: what autoscaling watches. Seconds to minutes under backlog.
QUEUE_SECONDS = "queue_seconds"
QUEUE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# From the start of the job's first batch to its result handed for storing:
# its forward passes, plus any batches of other jobs run between its items.
INFERENCE_SECONDS = "inference_seconds"
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

HISTOGRAMS = {QUEUE_SECONDS: QUEUE_BUCKETS, INFERENCE_SECONDS: INFERENCE_BUCKETS}


class BatchStats:
    """The increments of one batch (or one report of ended jobs), written in one pipeline."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.sums: Counter = Counter()

    def batch(self, size: int, passes: int, forward_s: float, tokens: int, padded_tokens: int) -> None:
        self.counts.update({"batches": 1, "items": size, f"size:{size}": 1, "passes": passes,
                            "tokens": tokens, "padded_tokens": padded_tokens})
        self.sums["forward_seconds"] += forward_s

    def failed(self, error_type: str) -> None:
        self.counts[f"failed:{error_type}"] += 1

    def observe(self, histogram: str, value: float) -> None:
        bounds = HISTOGRAMS[histogram]
        value = max(value, 0.0)  # clocks of two machines: never a negative wait
        index = bisect.bisect_left(bounds, value)
        bound = "+Inf" if index == len(bounds) else repr(float(bounds[index]))
        self.counts[f"{histogram}:le:{bound}"] += 1
        self.counts[f"{histogram}:count"] += 1
        self.sums[f"{histogram}:sum"] += value

    def __bool__(self) -> bool:
        return bool(self.counts or self.sums)

    def write(self, pipe, model_id: str) -> None:
        """Queue the increments of `model_id` on `pipe` (one HINCRBY per field that changed)."""
        key = protocol.batch_stats_key(model_id)
        for name, count in self.counts.items():
            if count:
                pipe.hincrby(key, name, count)
        for name, total in self.sums.items():
            pipe.hincrbyfloat(key, name, total)
        pipe.sadd(protocol.MODELS_KEY, model_id)


def histogram(fields: dict[str, float], name: str) -> tuple[list[tuple[str, float]], float, float]:
    """(cumulative buckets, sum, count) of histogram `name` in a model's hash (as read back)."""
    buckets, running = [], 0.0
    for bound in HISTOGRAMS[name]:
        running += fields.get(f"{name}:le:{float(bound)!r}", 0.0)
        buckets.append((repr(float(bound)), running))
    count = fields.get(f"{name}:count", 0.0)
    buckets.append(("+Inf", count))
    return buckets, fields.get(f"{name}:sum", 0.0), count


def failures(fields: dict[str, float]) -> dict[str, float]:
    """Failed jobs by error type."""
    return {name[len("failed:"):]: value for name, value in fields.items() if name.startswith("failed:")}


def padding_ratio(fields: dict[str, float]) -> float | None:
    """Padding tokens / all tokens the batches computed (0: no padding); None before any batch."""
    padded = fields.get("padded_tokens", 0.0)
    return (padded - fields.get("tokens", 0.0)) / padded if padded else None
