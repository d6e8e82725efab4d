"""How long a small job of one model waits behind a large generation job of another, on one worker.

    python -m bench.fairness MODEL_DIR [ITEMS MAX_NEW_TOKENS NUM_BEAMS NUM_RETURN_SEQUENCES]

A private Redis and one real worker serving tiny-bart and minilm. A plain
Celery client sends one tiny-bart job (default: the largest the budget
accepts, ITEMS items x MAX_NEW_TOKENS), then 1.5 s later a one-sentence
minilm job, and prints how long each took from its sending to its result.
The client bypasses the webapp, so a job over the budget can be sent too
(a worker with the budget refuses it at once; MAX_GENERATION_TOKENS_PER_REQUEST
in the environment is passed to the worker, to time a larger job).
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pydoc_data.topics import topics

from celery import Celery

from common.settings import Settings
from devtools.processes import Worker, service_env
from devtools.redis_server import EmbeddedRedis

WORDS = " ".join(topics.values()).split()


def main(model_dir: str, items: int | None = None, new: int | None = None, beams: int = 1, seqs: int = 1) -> None:
    settings = Settings.from_env()
    budget = {"max_generation_tokens_per_request": os.environ["MAX_GENERATION_TOKENS_PER_REQUEST"]} if (
        "MAX_GENERATION_TOKENS_PER_REQUEST" in os.environ) else {}
    items = items or settings.max_items_per_request
    new = new or max(1, settings.max_generation_tokens_per_request // (items * beams * seqs))
    log_dir = tempfile.mkdtemp(prefix="atf-fairness-")
    with EmbeddedRedis() as server:
        worker = Worker("fairness", service_env(server.url, model_dir, preload_models="tiny-bart,minilm", **budget),
                        log_dir).wait_ready(timeout=300)
        try:
            client = Celery("bench", broker=server.url, backend=server.url)
            client.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
            parameters = {"max_new_tokens": new, "num_beams": beams, "num_return_sequences": seqs}
            inputs = [" ".join(WORDS[i * 60:i * 60 + 60]) for i in range(items)]  # ~80 tokens: tiny-bart takes 256
            print(f"tiny-bart: {items} items x {new} max_new_tokens x {beams} num_beams x {seqs} "
                  f"num_return_sequences = {items * new * beams * seqs} tokens; minilm 1.5 s later", flush=True)
            took = {}

            def timed(name, model_id, args, kwargs):
                started = time.monotonic()
                result = client.send_task("tasks.infer", args=[model_id, args], kwargs=kwargs,
                                          queue=f"infer.{model_id}")
                try:
                    result.get(timeout=600)
                    took[name] = (time.monotonic() - started, "succeeded")
                except Exception as exc:  # noqa: BLE001 - reported
                    took[name] = (time.monotonic() - started, f"failed: {str(exc)[:160]}")

            big = threading.Thread(target=timed, args=("tiny-bart", "tiny-bart", inputs, {"parameters": parameters}))
            big.start()
            time.sleep(1.5)
            timed("minilm", "minilm", ["The quick brown fox jumps over the lazy dog."], {})
            print(f"minilm job: {took['minilm'][0]:.2f} s from sending to result ({took['minilm'][1]})", flush=True)
            big.join()
            print(f"tiny-bart job: {took['tiny-bart'][0]:.2f} s ({took['tiny-bart'][1]})", flush=True)
        finally:
            worker.stop()


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
