"""How long the largest generation requests the budget accepts hold a worker, in-process.

    python -m bench.budget MODEL_DIR [BUDGET]
    python -m bench.budget MODEL_DIR others

For each demo generation model and each shape of request that generates
up to BUDGET tokens (default: MAX_GENERATION_TOKENS_PER_REQUEST) — many
items and few tokens, long answers, beams, beams x sequences, sampled
sequences — with inputs as long as the model takes, it runs the request
through the worker's own runner in batches of at most MAX_BATCH_SIZE items
(as the worker does) and prints the seconds it held the device, and the
CPU seconds it took (on a busy machine, run it with OMP_NUM_THREADS=1: CPU
seconds then approach what a quiet machine takes). The slowest shape is
the worst accepted request, which the default is sized by.
`others` does the same for the zero-shot, fill-mask and token-vector
budgets, and prints the size of the result's JSON too.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pydoc_data.topics import topics

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common.budget import generation_tokens, items_per_batch  # noqa: E402
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
        items = min(max_items, budget // (new * beams * seqs))
        if items < 1:
            continue  # one item of this shape is over the budget already
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
          f"{'in':>4} {'seconds':>8} {'CPU s':>8}")
    for model_id in MODELS:
        info = store.describe(model_id)
        runner = load_runner(info, "cpu")
        defaults = default_parameters(info, info.task)
        longest_answer = settings.max_new_tokens
        if info.task == "text-generation":  # prompt and answer share the model's positions: leave a prompt room
            longest_answer = min(longest_answer, runner.max_length - 64)
        for items, raw in shapes(budget, settings.max_items_per_request, longest_answer):
            if info.task == "text-generation" and "num_beams" in raw:
                continue  # not a parameter of text-generation
            params = validate_parameters(info.task, raw, defaults, settings.max_new_tokens)
            room = runner.max_length - (params["max_new_tokens"] if info.task == "text-generation" else 0)
            texts, words = [], max(1, room - 2)
            while True:  # as long an input as the model takes
                texts = [" ".join(WORDS[i * 7:i * 7 + words]) for i in range(items)]
                try:
                    encodings = runner.encode(texts, params)
                    break
                except Exception:  # noqa: BLE001 - too long: shorten
                    if words <= 1:
                        raise
                    words = int(words * 0.8)
            longest = max(e.length for e in encodings)
            started, cpu = time.perf_counter(), time.process_time()
            for start in range(0, items, settings.max_batch_size):
                runner.run(encodings[start:start + settings.max_batch_size], params)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            print(f"{model_id:<12} {items:>5} {params['max_new_tokens']:>4} {params.get('num_beams', 1):>5} "
                  f"{params['num_return_sequences']:>4} {str(bool(params.get('do_sample'))):>6} "
                  f"{generation_tokens(info.task, params, items, defaults):>7} {longest:>4} {elapsed:>8.2f} "
                  f"{cpu:>8.2f}",
                  flush=True)


def others(model_dir: str) -> None:
    """The largest accepted zero-shot, fill-mask and token-vector requests, with inputs as long as allowed."""
    import orjson

    from model_store.loader import load_runner

    settings = replace(Settings.from_env(), model_dir=model_dir)  # the budgets: defaults, or as set
    store = ModelStore(model_dir)
    pairs, predictions = settings.max_zero_shot_pairs_per_request, settings.max_fill_mask_predictions_per_request
    vectors = settings.max_token_vectors_per_request
    cases = [  # (model, items, params, the text of an item, what is counted)
        ("tiny-zero-shot", pairs // 64, {"candidate_labels": [f"label number {i}" for i in range(64)]},
         None, f"{pairs // 64} items x 64 labels"),
        ("tiny-zero-shot", min(256, pairs // 2), {"candidate_labels": ["yes", "no"]}, None,
         f"{min(256, pairs // 2)} items x 2 labels"),
        ("tiny-fill-mask", max(1, predictions // (100 * 40)), {"top_k": 100}, "mask40",
         f"{max(1, predictions // 4000)} items x 40 masks x top_k 100"),
        ("tiny-fill-mask", predictions // 100, {"top_k": 100}, "mask1",
         f"{predictions // 100} items x 1 mask x top_k 100"),
        ("minilm", vectors // 256, {"pooling": "none"}, None, f"{vectors // 256} items x 256 tokens, pooling none"),
    ]
    print(f"{'model':<16} {'request':<40} {'seconds':>8} {'CPU s':>8} {'JSON MB':>8}")
    for model_id, items, raw, kind, label in cases:
        info = store.describe(model_id)
        runner = load_runner(info, "cpu")
        params = validate_parameters(info.task, raw, default_parameters(info, info.task), settings.max_new_tokens)
        words = WORDS[:runner.max_length]
        if kind == "mask40":
            words = [runner.mask_token if i % 6 == 0 and i < 240 else w for i, w in enumerate(words)]
        elif kind == "mask1":
            words = [runner.mask_token] + words
        base = words[:runner.max_length]
        while len(runner.tokenizer(" ".join(base) + " 999")["input_ids"]) > runner.max_length:
            base = base[:-4]  # as long an input as the model takes, without truncation
        texts = [" ".join(base) + f" {i}" for i in range(items)]
        encodings = runner.encode(texts, params)
        started, cpu = time.perf_counter(), time.process_time()
        outputs = []
        batch = items_per_batch(info.task, params, settings) or settings.max_batch_size
        for start in range(0, items, min(batch, settings.max_batch_size)):
            outputs.extend(runner.run(encodings[start:start + min(batch, settings.max_batch_size)], params))
        size = len(orjson.dumps(outputs, option=orjson.OPT_SERIALIZE_NUMPY))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        print(f"{model_id:<16} {label:<40} {elapsed:>8.2f} {cpu:>8.2f} {size / 1e6:>8.1f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2] == "others":
        others(sys.argv[1])
    else:
        main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
