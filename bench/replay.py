"""The service's own batches, run again in a quiet process: how fast could those batches go?

    python -m bench.replay MODEL_DIR BATCHES_JSON OUT_JSON [BESIDE]

BATCHES_JSON lists the [items, longest tokens] of each forward pass the
worker logged at one load level (`batches_in_log`). Plain transformers
(AutoModel + mean pooling, as bench/ceiling.py), each batch a tensor of
that shape: the work of the worker's forward passes, nothing else on the
machine. Against the in-process ceiling (length-sorted batches drawn from
the whole sample, the best case for padding), this says what the batches
themselves cost: what 64 requests in flight allow to put together.
Against the service's own forward speed, it says what sharing the cores
with the webapp, Redis and the load generator cost.

With BESIDE (a share of one core, e.g. 0.3) a competitor process burns
that much CPU while the batches run, 10 ms periods busy for that share of
each: the CPU the service's other processes took, with no service around
the model. The model's OpenMP threads meet at every operator, so a thread
that waits for its core holds up the others: the passes can lose more than
the share taken.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The batcher's line (tasks/batcher.py): "batch: <model>, <n> items, longest <L> tokens, ..."
BATCH_LINE = re.compile(r"batch: (?P<model>[^,]+), (?P<items>\d+) items, longest (?P<longest>\d+) tokens")
BURN_PERIOD_S = 0.010  # the competitor's period: busy for its share of each, asleep for the rest


def batches_in_log(text: str, model_id: str) -> list[tuple[int, int]]:
    """(items, longest tokens) of every forward pass of `model_id` in a worker's log text."""
    return [(int(m["items"]), int(m["longest"])) for m in BATCH_LINE.finditer(text) if m["model"] == model_id]


def burn(share: float, period: float = BURN_PERIOD_S) -> None:
    """Busy `share` of every `period`, asleep the rest, until killed (the competitor process)."""
    while True:
        started = time.perf_counter()
        while time.perf_counter() - started < share * period:
            pass
        time.sleep((1 - share) * period)


def main(model_path: str, batches_path: str, out_path: str, beside: float = 0.0, rounds: int = 2) -> dict:
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(model_path).eval()
    batches = [tuple(b) for b in json.loads(Path(batches_path).read_text())]

    def forward(items: int, longest: int) -> None:
        ids = torch.ones(items, longest, dtype=torch.long)
        with torch.inference_mode():
            hidden = model(input_ids=ids, attention_mask=ids).last_hidden_state
            mask = ids.unsqueeze(-1).to(hidden.dtype)
            ((hidden * mask).sum(1) / mask.sum(1)).tolist()

    for items, longest in batches[:8]:  # warm-up
        forward(items, longest)
    competitor = None
    if beside > 0:
        import multiprocessing

        competitor = multiprocessing.get_context("spawn").Process(target=burn, args=(beside,), daemon=True)
        competitor.start()
    speeds = []
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            for items, longest in batches:
                forward(items, longest)
            speeds.append(sum(items for items, _ in batches) / (time.perf_counter() - started))
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.join()
    result = {"batches": len(batches), "items": sum(items for items, _ in batches),
              "items_per_s": max(speeds), "rounds": speeds, "beside": beside}
    Path(out_path).write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    main(*sys.argv[1:4], *[float(arg) for arg in sys.argv[4:5]])
