"""What one request may ask of the model, beyond the size of each of its parts.

Each factor of a request has a cap of its own, but their product had none:
one tiny-bart request of 256 items x 256 new tokens x 8 beams x 8 sequences,
every factor within its cap, held a 2-core worker for 82 s. The products
that make a request's work are bounded here, each by a setting:

- generation: items x max_new_tokens x num_beams x num_return_sequences
  generated tokens (MAX_GENERATION_TOKENS_PER_REQUEST);
- zero-shot classification: items x candidate_labels premise-hypothesis
  pairs, one forward pass each (MAX_ZERO_SHOT_PAIRS_PER_REQUEST);
- fill-mask: mask tokens x top_k predictions, each with its own decoded
  sequence (MAX_FILL_MASK_PREDICTIONS_PER_REQUEST);
- feature-extraction with pooling "none": the token vectors returned, one
  per token of every item (MAX_TOKEN_VECTORS_PER_REQUEST).

The webapp checks them before queueing, and the worker again, since a
message from another client may not have passed the webapp. Token vectors
are counted in tokens, so only the worker, which tokenizes, checks them.
Pure functions.
"""

from __future__ import annotations

from common.errors import OverBudget
from common.params import GENERATION_TASKS, MAX_NEW_TOKENS_PARAM

GENERATION_BUDGET_SETTING = "MAX_GENERATION_TOKENS_PER_REQUEST"
ZERO_SHOT_BUDGET_SETTING = "MAX_ZERO_SHOT_PAIRS_PER_REQUEST"
FILL_MASK_BUDGET_SETTING = "MAX_FILL_MASK_PREDICTIONS_PER_REQUEST"
TOKEN_VECTORS_BUDGET_SETTING = "MAX_TOKEN_VECTORS_PER_REQUEST"
# The factors of a generation request's work, in the order the message names them.
_PER_ITEM_FACTORS = (MAX_NEW_TOKENS_PARAM, "num_beams", "num_return_sequences")


def generation_factors(task: str, params: dict, defaults: dict | None = None) -> dict[str, int]:
    """Per item, the factors of the tokens generated: max_new_tokens, num_beams, num_return_sequences.

    `params` are validated (defaults filled in); `defaults` are the model's
    own (model_store.store.default_parameters: the beams its generation
    config asks for), which generate() uses for a parameter the task does
    not take. {} for a task that does not generate.
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


def work_per_item(task: str, params: dict, defaults: dict | None = None) -> tuple[int, str] | None:
    """The work of one item whatever its text, and the setting that bounds it; None when it varies or is free.

    Generation: its generated tokens; zero-shot: its pairs (one per label).
    """
    if task in GENERATION_TASKS:
        return generation_tokens(task, params, 1, defaults), GENERATION_BUDGET_SETTING
    if task == "zero-shot-classification":
        return len(params.get("candidate_labels") or ()), ZERO_SHOT_BUDGET_SETTING
    return None


def items_per_batch(task: str, params: dict, settings, defaults: dict | None = None) -> int | None:
    """How many items with these parameters fit in one request's budget (at least 1); None if unbounded.

    The batcher runs no bigger batch, so a batch holds the device no longer
    than the worst request the budget lets in.
    """
    per_item = work_per_item(task, params, defaults)
    if per_item is None or per_item[0] <= 0:
        return None
    work, setting = per_item
    return max(1, _budget(settings, setting) // work)


def check_request_budget(task: str, params: dict, items: list, settings, defaults: dict | None = None,
                         mask_token: str | None = None) -> None:
    """Raise OverBudget (422) when the request's work is over its task's budget.

    `items` are the inputs to compute; `params` validated; `settings` has
    the budgets. The message says the budget, the request's count and
    its factors, and what to lower.
    """
    if task in GENERATION_TASKS:
        factors = generation_factors(task, params, defaults)
        requested = generation_tokens(task, params, len(items), defaults)
        product = " x ".join([_count(len(items), "item")] + [f"{v} {k}" for k, v in factors.items()])
        _check(requested, settings, GENERATION_BUDGET_SETTING, f"generate up to {product} = {requested} tokens",
               "send fewer items, or lower max_new_tokens, num_beams or num_return_sequences")
    elif task == "zero-shot-classification":
        labels = len(params.get("candidate_labels") or ())
        requested = len(items) * labels
        _check(requested, settings, ZERO_SHOT_BUDGET_SETTING,
               f"run {_count(len(items), 'item')} x {labels} candidate_labels = {requested} pairs "
               "through the model", "send fewer items or fewer candidate_labels")
    elif task == "fill-mask" and mask_token:
        masks = sum(item.count(mask_token) for item in items if isinstance(item, str))
        top_k = int(params.get("top_k", 1))
        requested = masks * top_k
        _check(requested, settings, FILL_MASK_BUDGET_SETTING,
               f"return {masks} {mask_token} tokens (in {_count(len(items), 'item')}) x {top_k} top_k = "
               f"{requested} predictions", "send fewer masks, or lower top_k")


def check_encoded_budget(task: str, params: dict, lengths: list[int], settings) -> None:
    """Raise OverBudget (422) when the tokenized items are over a budget counted in tokens.

    `lengths` are the items' lengths in tokens, as the model will read
    them. Feature extraction with pooling "none" returns a vector per token:
    256 items of 256 tokens were 25 million numbers, ~250 MB of JSON.
    """
    if task == "feature-extraction" and params.get("pooling") == "none":
        requested = sum(lengths)
        _check(requested, settings, TOKEN_VECTORS_BUDGET_SETTING,
               f"return {requested} token vectors (pooling none, {_count(len(lengths), 'item')} of up to "
               f"{max(lengths, default=0)} tokens)", "send fewer or shorter items, or pool them")


def _budget(settings, setting: str) -> int:
    return getattr(settings, setting.lower())


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _check(requested: int, settings, setting: str, asks: str, advice: str) -> None:
    budget = _budget(settings, setting)
    if requested > budget:
        raise OverBudget(f"the request would {asks}; at most {budget} per request ({setting}): {advice}",
                         field="parameters", budget=budget, requested=requested)
