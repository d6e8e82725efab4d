"""What one request may ask of the model, beyond the size of each of its parts.

Each factor of a generation request has a cap of its own (items,
max_new_tokens, num_beams, num_return_sequences), but their product had
none: one tiny-bart request of 256 items x 256 new tokens x 8 beams x 8
sequences, every factor within its cap, held a 2-core worker for 82 s.
The product is bounded here, by MAX_GENERATION_TOKENS_PER_REQUEST: in the
webapp before queueing, and again in the worker, since a message from
another client may not have passed the webapp. Pure functions.
"""

from __future__ import annotations

from common.errors import OverBudget
from common.params import GENERATION_TASKS, MAX_NEW_TOKENS_PARAM

GENERATION_BUDGET_SETTING = "MAX_GENERATION_TOKENS_PER_REQUEST"
# The factors of a generation request's work, in the order the message names them.
_PER_ITEM_FACTORS = (MAX_NEW_TOKENS_PARAM, "num_beams", "num_return_sequences")


def generation_factors(task: str, params: dict, defaults: dict | None = None) -> dict[str, int]:
    """Per item, the factors of the tokens generated: max_new_tokens, num_beams, num_return_sequences.

    `params` are validated (defaults filled in); `defaults` are the model's
    own (common.params' defaults: the beams its generation config asks for),
    which generate() uses for a parameter the task does not take. {} for a
    task that does not generate.
    """
    if task not in GENERATION_TASKS:
        return {}
    defaults = defaults or {}
    return {name: int(params.get(name, defaults.get(name, 1))) for name in _PER_ITEM_FACTORS}


def generation_tokens(task: str, params: dict, items: int, defaults: dict | None = None) -> int:
    """Tokens `items` inputs make the model generate: items x max_new_tokens x num_beams x num_return_sequences.

    Counted as if every beam and returned sequence were decoded to
    max_new_tokens: an upper bound, which is what a budget needs. 0 for a
    task that does not generate.
    """
    factors = generation_factors(task, params, defaults)
    if not factors:
        return 0
    total = items
    for value in factors.values():
        total *= value
    return total


def items_within_generation_budget(task: str, params: dict, budget: int, defaults: dict | None = None) -> int | None:
    """How many items with these parameters fit in `budget` generated tokens (at least 1); None if not generating."""
    per_item = generation_tokens(task, params, 1, defaults)
    if not per_item:
        return None
    return max(1, budget // per_item)


def check_generation_budget(task: str, params: dict, items: int, budget: int, defaults: dict | None = None) -> None:
    """Raise OverBudget (422) when the request would generate more than `budget` tokens.

    The message says the budget, the request's count, each factor, and
    what to lower.
    """
    factors = generation_factors(task, params, defaults)
    if not factors:
        return
    requested = generation_tokens(task, params, items, defaults)
    if requested <= budget:
        return
    product = " x ".join([f"{items} item{'s' if items != 1 else ''}"] + [f"{v} {k}" for k, v in factors.items()])
    raise OverBudget(
        f"the request would generate up to {product} = {requested} tokens; at most {budget} per request "
        f"({GENERATION_BUDGET_SETTING}): send fewer items, or lower max_new_tokens, num_beams or "
        "num_return_sequences", field="parameters", budget=budget, requested=requested)
