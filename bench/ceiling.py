"""The in-process ceiling: what one Python process gets out of the model, no service around it.

    python -m bench.ceiling MODEL_DIR TEXTS_FILE OUT_JSON

Plain transformers (tokenizer + AutoModel + mean pooling), nothing of ours:
- single: each text alone (tokenize, forward, pool), one after the other —
  the latency a lone request could have; and the same after IDLE_S idle
  before each, as a service's model calls come: a lone client's request
  leaves the model idle while it crosses the service (the 5 ms the
  1-client target allows), and on a VM a call after a pause runs slower;
- batched: the same texts in length-sorted batches of 1..64 (the best case
  for padding) and in arrival order; the ceiling is the best texts/s.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
IDLE_S = 0.005  # before each text of the "after idle" singles


def main(model_path: str, texts_path: str, out_path: str, sample: int = 1024, singles: int = 300) -> dict:
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()
    texts = [line.rstrip("\n") for line in open(texts_path, encoding="utf-8") if line.strip()]
    random.seed(0)
    chosen = random.sample(texts, min(sample, len(texts)))

    def embed(batch):
        enc = tokenizer(batch, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(1) / mask.sum(1)).tolist()

    def singles_ms(idle_s: float) -> list[float]:
        """Each text alone, `idle_s` asleep before each (ms)."""
        times = []
        for text in chosen[:singles]:
            if idle_s:
                time.sleep(idle_s)
            started = time.perf_counter()
            embed([text])
            times.append((time.perf_counter() - started) * 1000)
        return times

    embed(chosen[:8])  # warm-up
    single_ms = singles_ms(0)
    idle_ms = singles_ms(IDLE_S)
    lengths = {t: len(tokenizer(t, truncation=True, max_length=256)["input_ids"]) for t in chosen}
    by_length = sorted(chosen, key=lambda t: lengths[t])
    batched = {}
    for size in BATCH_SIZES:
        row = {}
        for name, order in (("sorted", by_length), ("arrival", chosen)):
            started = time.perf_counter()
            for i in range(0, len(order), size):
                embed(order[i:i + size])
            row[name] = len(order) / (time.perf_counter() - started)
        batched[size] = row
        print(f"  in-process, batches of {size:>2}: {row['sorted']:6.1f} texts/s length-sorted, "
              f"{row['arrival']:6.1f} in arrival order", flush=True)
    best = max(batched, key=lambda b: batched[b]["sorted"])
    single_ms.sort()
    result = {
        "texts": len(chosen),
        "mean_tokens": statistics.mean(lengths.values()),
        "threads": torch.get_num_threads(),
        "single_p50_ms": statistics.median(single_ms),
        "single_p99_ms": single_ms[int(0.99 * (len(single_ms) - 1))],
        "single_after_idle_p50_ms": statistics.median(idle_ms),
        "idle_ms": IDLE_S * 1000,
        "batched": batched,
        "ceiling_batch": best,
        "ceiling_texts_per_s": batched[best]["sorted"],
    }
    with open(out_path, "w") as out:
        json.dump(result, out, indent=1)
    return result


if __name__ == "__main__":
    main(*sys.argv[1:4])
