"""Batch planning: which waiting items go through the model together. Pure."""

from __future__ import annotations

from typing import Sequence


class Item:
    """One input, encoded and waiting for a forward pass, for one job or more.

    `job`/`index` are where the item came from; `targets` lists every
    (job, index) that wants its output: identical inputs of jobs in
    flight together share one item (and one forward pass).
    """

    __slots__ = ("job", "index", "encoding", "length", "params_key", "seq", "key", "targets", "running")

    def __init__(self, job, index: int, encoding, length: int, params_key: str, seq: int, key=None):
        self.job = job
        self.index = index
        self.encoding = encoding
        self.length = length
        self.params_key = params_key
        self.seq = seq  # arrival order on this worker
        self.key = key  # cache key, when the item may be shared
        self.targets = [(job, index)]
        self.running = False  # in a batch already: no job may join it any more

    def jobs(self):
        return [job for job, _ in self.targets]

    @property
    def alive(self) -> bool:
        """Some job still wants this item's output."""
        return any(not job.done for job, _ in self.targets)

    def __repr__(self) -> str:
        return f"Item(job={getattr(self.job, 'id', self.job)!r}, index={self.index}, length={self.length})"


def jobs_of(items) -> list:
    """The jobs that want the outputs of `items`, each once, in order of first appearance."""
    return list(dict.fromkeys(job for item in items for job, _ in item.targets))


def padded_tokens(items: Sequence[Item]) -> int:
    """What a batch costs the model: items x the longest sequence."""
    return len(items) * max((it.length for it in items), default=0)


def plan_batch(waiting: Sequence[Item], max_items: int, max_tokens: int, cost) -> list[Item]:
    """The next batch to run, taken from `waiting` (in arrival order).

    The oldest item always runs now, so nothing starves, and it decides the
    parameter group (only equal parameters share a batch). The group is
    sorted by token length and cut into consecutive batches so that running
    all of them takes the least time by `cost` (a CostModel), each batch
    within `max_items` items and `max_tokens` padded tokens: a dynamic
    programme over the sorted lengths. The batch holding the oldest item
    runs now; the others are only a plan, redone when the next batch is
    chosen with whatever has arrived meanwhile. So short items are not
    padded into long batches, rare lengths still get company when that
    pays, and batch sizes follow the measured cost, not a fixed number.
    """
    if not waiting:
        return []
    oldest = waiting[0]
    group = sorted((it for it in waiting if it.params_key == oldest.params_key), key=lambda it: (it.length, it.seq))
    n = len(group)
    time = cost.time
    # best[i]: least time to run group[:i]; cut[i]: size of the last batch
    best = [0.0] * (n + 1)
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        longest = group[i - 1].length
        most = min(max_items, i, max(1, max_tokens // longest))
        choice, size = None, 1
        for c in range(1, most + 1):
            total = best[i - c] + time(c, longest)
            if choice is None or total < choice:
                choice, size = total, c
        best[i], cut[i] = choice, size
    i = n
    while i > 0:
        start = i - cut[i]
        batch = group[start:i]
        if any(it is oldest for it in batch):
            return batch
        i = start
    raise AssertionError("the oldest item is in no batch")


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
