"""Batch planning: which waiting items go through the model together. Pure."""

from __future__ import annotations

from typing import Sequence


class Item:
    """One input of one job, encoded and waiting for a forward pass."""

    __slots__ = ("job", "index", "encoding", "length", "params_key", "seq")

    def __init__(self, job, index: int, encoding, length: int, params_key: str, seq: int):
        self.job = job
        self.index = index
        self.encoding = encoding
        self.length = length
        self.params_key = params_key
        self.seq = seq  # arrival order on this worker

    def __repr__(self) -> str:
        return f"Item(job={getattr(self.job, 'id', self.job)!r}, index={self.index}, length={self.length})"


def padded_tokens(items: Sequence[Item]) -> int:
    """What a batch costs the model: items x the longest sequence."""
    return len(items) * max((it.length for it in items), default=0)


def plan_batch(waiting: Sequence[Item], max_items: int, max_tokens: int) -> list[Item]:
    """The next batch to run, taken from `waiting` (arrival order).

    The oldest item decides the parameter group (only equal parameters
    share a batch), so no item starves. Items of that group follow in
    arrival order while the batch stays within `max_items` items and
    `max_tokens` padded tokens; an item that would break the token cap is
    left for a later batch. The oldest item always runs, even alone over
    the token cap, so nothing waits forever.
    """
    if not waiting:
        return []
    first = waiting[0]
    batch = [first]
    longest = first.length
    for item in waiting[1:]:
        if len(batch) >= max_items:
            break
        if item.params_key != first.params_key:
            continue
        new_longest = max(longest, item.length)
        if new_longest * (len(batch) + 1) > max_tokens:
            continue
        batch.append(item)
        longest = new_longest
    return batch


def run_isolating(items: Sequence[Item], run, on_outputs, on_error) -> int:
    """Run `items` as one batch; if it raises, split it until the culprits are alone.

    `run(items)` returns one output per item; `on_outputs(items, outputs)`
    takes a successful (sub-)batch; `on_error(item, exc)` takes an item that
    fails even alone. A batch with one poisoned item costs about
    2·log2(n) extra passes instead of n, and every other item still gets
    its output. Returns the number of forward passes made.
    """
    try:
        outputs = run(items)
    except Exception as exc:  # noqa: BLE001 - any model failure is isolated
        if len(items) == 1:
            on_error(items[0], exc)
            return 1
        middle = len(items) // 2
        return 1 + run_isolating(items[:middle], run, on_outputs, on_error) + run_isolating(
            items[middle:], run, on_outputs, on_error
        )
    on_outputs(items, outputs)
    return 1
