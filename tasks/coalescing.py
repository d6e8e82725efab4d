"""Identical inputs of jobs in flight together share one item and one forward pass.

A lane keeps a SharedItems table: for each cache key (tasks/job.py), the
item that computes it. An input whose key an item still waiting computes
joins that item (its output goes to both jobs) instead of taking a place
of its own in the batch. Once an item is in a batch no job joins it any
more: its outputs may be handed out any moment.
"""

from __future__ import annotations

import threading

from tasks.planning import Item


class SharedItems:
    """Cache key -> the item computing it, for the items of one lane.

    The consumer thread joins and adds items, the device thread starts them
    and hands their outputs out; one lock keeps "join if not started" and
    "start" apart, so an input never joins an item whose outputs were
    already handed out.
    """

    def __init__(self):
        self._leaders: dict[str, Item] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._leaders)

    def join_or_lead(self, item: Item) -> bool:
        """True when a waiting item computes `item`'s key already: `item`'s input joined it.

        Otherwise (False) `item` computes its key from now on, and inputs
        with that key join it; an item without a key is never shared.
        """
        if item.key is None:
            return False
        with self._lock:
            leader = self._leaders.get(item.key)
            if leader is not None and leader.alive and not leader.running:
                leader.targets.append((item.job, item.index))
                return True
            self._leaders[item.key] = item
            return False

    def start(self, items: list[Item]) -> None:
        """The items are in a batch: an input arriving now gets an item of its own."""
        with self._lock:
            for item in items:
                item.running = True

    def hand_out(self, item: Item) -> list[tuple]:
        """Every (job, index) that wants the item's output; the item leaves the table."""
        with self._lock:
            self._drop(item)
            return list(item.targets)

    def forget(self, items: list[Item]) -> None:
        """Items no job wants any more leave the table."""
        with self._lock:
            for item in items:
                self._drop(item)

    def clear(self) -> None:
        """Nothing is shared any more (the items were encoded for a model version now gone)."""
        with self._lock:
            self._leaders = {}

    def _drop(self, item: Item) -> None:
        if item.key is not None and self._leaders.get(item.key) is item:
            del self._leaders[item.key]
