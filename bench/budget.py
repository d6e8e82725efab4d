"""How long the largest generation requests the budget accepts hold a worker, in-process.

    python -m bench.budget MODEL_DIR [BUDGET]

For each demo generation model and each shape of request that generates
up to BUDGET tokens (default: MAX_GENERATION_TOKENS_PER_REQUEST) — many
items and few tokens, long answers, beams, beams x sequences, sampled
sequences — with inputs as long as the model takes, it runs the request
through the worker's own runner in batches of at most MAX_BATCH_SIZE items
(as the worker does) and prints the seconds it held the device. The
slowest shape is the worst accepted request, which the default is sized by.
"""

from __future__ import annotations

import os
import sys
import time
from pydoc_data.topics import topics

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common.budget import generation_tokens  # noqa: E402
from common.params import validate_parameters  # noqa: E402
from common.settings import Settings  # noqa: E402
from model_store.store import ModelStore, default_parameters  # noqa: E402

MODELS = ("tiny-bart", "tiny-gpt2")
WORDS = " ".join(topics.values()).split()


def shapes(budget: int, max_items: int, max_new_tokens: int):
    """(items, parameters) of requests that generate up to `budget` tokens each."""
    for new, beams, seqs, sample in ((budget // max_items, 1, 1, False), (max_new_tokens, 1, 1, False),
                                     (max_new_tokens, 8, 1, False), (max_new_tokens, 8, 8, False),
                                     (max_new_tokens, 1, 8, True)):
        new = max(1, min(new, max_new_tokens))
        items = max(1, min(max_items, budget // (new * beams * seqs)))
        params = {"max_new_tokens": new, "num_return_sequences": seqs}
        if beams > 1:
            params["num_beams"] = beams
        if sample:
            params["do_sample"] = True
        yield items, params


def main(model_dir: str, budget: int | None = None) -> None:
    from model_store.loader import load_runner

    settings = Settings(model_dir=model_dir)
    budget = budget or settings.max_generation_tokens_per_request
    store = ModelStore(model_dir)
    print(f"budget {budget} generated tokens per request; batches of at most {settings.max_batch_size} items")
    print(f"{'model':<12} {'items':>5} {'new':>4} {'beams':>5} {'seqs':>4} {'sample':>6} {'tokens':>7} "
          f"{'in':>4} {'seconds':>8}")
    for model_id in MODELS:
        info = store.describe(model_id)
        runner = load_runner(info, "cpu")
        defaults = default_parameters(info, info.task)
        for items, raw in shapes(budget, settings.max_items_per_request, settings.max_new_tokens):
            if info.task == "text-generation":
                raw.pop("num_beams", None)  # not a parameter of text-generation
                if not raw.get("do_sample") and raw["num_return_sequences"] > 1:
                    continue
            params = validate_parameters(info.task, raw, defaults, settings.max_new_tokens)
            room = runner.max_length - (params["max_new_tokens"] if info.task == "text-generation" else 0)
            texts, words = [], max(1, room - 2)
            while True:  # as long an input as the model takes
                texts = [" ".join(WORDS[i * 7:i * 7 + words]) for i in range(items)]
                try:
                    encodings = runner.encode(texts, params)
                    break
                except Exception:  # noqa: BLE001 - too long: shorten
                    words = int(words * 0.8)
            longest = max(e.length for e in encodings)
            started = time.perf_counter()
            for start in range(0, items, settings.max_batch_size):
                runner.run(encodings[start:start + settings.max_batch_size], params)
            elapsed = time.perf_counter() - started
            print(f"{model_id:<12} {items:>5} {params['max_new_tokens']:>4} {params.get('num_beams', 1):>5} "
                  f"{params['num_return_sequences']:>4} {str(bool(params.get('do_sample'))):>6} "
                  f"{generation_tokens(info.task, params, items, defaults):>7} {longest:>4} {elapsed:>8.2f}",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
