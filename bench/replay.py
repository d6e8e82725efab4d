"""The service's own batches, run again in a quiet process: how fast could those batches go?

    python -m bench.replay MODEL_DIR BATCHES_JSON OUT_JSON

BATCHES_JSON lists the [items, longest tokens] of each forward pass the
worker logged at one load level (`batches_in_log`). Plain transformers
(AutoModel + mean pooling, as bench/ceiling.py), each batch a tensor of
that shape: the work of the worker's forward passes, nothing else on the
machine. Against the in-process ceiling (length-sorted batches drawn from
the whole sample, the best case for padding), this says what the batches
themselves cost: what 64 requests in flight allow to put together.
Against the service's own forward speed, it says what sharing the cores
with the webapp, Redis and the load generator cost.
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


def batches_in_log(text: str, model_id: str) -> list[tuple[int, int]]:
    """(items, longest tokens) of every forward pass of `model_id` in a worker's log text."""
    return [(int(m["items"]), int(m["longest"])) for m in BATCH_LINE.finditer(text) if m["model"] == model_id]


def main(model_path: str, batches_path: str, out_path: str, rounds: int = 2) -> dict:
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
    speeds = []
    for _ in range(rounds):
        started = time.perf_counter()
        for items, longest in batches:
            forward(items, longest)
        speeds.append(sum(items for items, _ in batches) / (time.perf_counter() - started))
    result = {"batches": len(batches), "items": sum(items for items, _ in batches),
              "items_per_s": max(speeds), "rounds": speeds}
    Path(out_path).write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    main(*sys.argv[1:4])
