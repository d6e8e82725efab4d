"""CPU time the webapp spends validating one request body, in-process.

    python -m bench.validation_cost [N]

Runs what POST /predict does before it looks at the model store — JSON
decoding left out — on representative bodies: the body's shape
(webapp.schemas.parse_predict), the task's parameters and each input item
(common.params). N runs of each (default 20000); prints microseconds of
CPU per body, the figure to compare before and after a change to
validation (the budget is ~100 us per request). `python -m bench` adds the
same table to bench/RESULTS.md.
"""

from __future__ import annotations

import sys
import time

from common.params import validate_item, validate_parameters
from common.settings import Settings
from webapp.schemas import parse_predict

SETTINGS = Settings()
SENTENCES = [f"sentence number {i} of a representative request, about sixty characters long." for i in range(8)]
# (name, body, the model's task)
BODIES = [
    ("one string", {"model_id": "minilm", "inputs": SENTENCES[0]}, "feature-extraction"),
    ("8 strings, parameters, options",
     {"model_id": "minilm", "inputs": SENTENCES, "parameters": {"normalize": True, "pooling": "mean"},
      "options": {"wait": 10, "use_cache": False, "timeout": 60}}, "feature-extraction"),
    ("question answering",
     {"model_id": "tiny-qa", "inputs": {"question": "Who?", "context": SENTENCES[1]}, "parameters": {"top_k": 2}},
     "question-answering"),
    ("generation", {"model_id": "tiny-gpt2", "text": SENTENCES[:2],
                    "parameters": {"max_new_tokens": 16, "do_sample": True, "temperature": 0.7}},
     "text-generation"),
]


def validate(body: dict, task: str) -> None:
    """What /predict validates, in its order (webapp/views/predict.py)."""
    req = parse_predict(body, SETTINGS)
    validate_parameters(task, req.parameters, None, SETTINGS.max_new_tokens)
    for i, item in enumerate(req.items):
        validate_item(task, item, f"inputs[{i}]" if req.is_list else "inputs", SETTINGS.max_input_chars)


def cost_us(body: dict, task: str, n: int) -> float:
    validate(body, task)  # warm up, and fail loudly on a body that is not valid
    start = time.process_time()
    for _ in range(n):
        validate(body, task)
    return (time.process_time() - start) / n * 1e6


def report(n: int = 20_000) -> list[str]:
    """RESULTS.md's section: CPU per validation of each representative body."""
    lines = ["## Request validation (budget: about 0.1 ms of CPU per request)", "",
             f"`python -m bench.validation_cost {n}`: what `POST /predict` checks before it looks at the model "
             "store (the body's shape by the pydantic models of webapp/schemas.py, which also write the "
             "OpenAPI document; the task's parameters; each item), in-process.", "",
             "| body | CPU µs per validation |", "|---|---:|"]
    lines += [f"| {name} | {cost_us(body, task, n):.1f} |" for name, body, task in BODIES]
    return lines + [""]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    print("\n".join(report(n)))


if __name__ == "__main__":
    main()
