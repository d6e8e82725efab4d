"""Which model runs next on a worker's one device: fair shares of its time. Pure.

All models of a worker run their batches on one device thread
(tasks/batcher.py). Picking the model whose oldest item is oldest let a
large request hold the device to its end: a minilm request waited 80 s
behind one tiny-bart request. Here each model's lane is charged the
seconds its batches take, and the lane with work that was charged least
runs next, as a fair-share scheduler does: models with work share the
device's time equally, and a model that had none waits for at most the
batch in flight. A model alone on the worker runs exactly as before.
"""

from __future__ import annotations

import itertools


class FairShare:
    """Picks the next lane among those with work, and charges each lane its batches' time.

    A lane here is anything with `served_s` (seconds charged), `last_turn`
    (number of its last batch, -1 for none) and `waiting` (its items, oldest
    first, each with an arrival number `seq`).
    """

    def __init__(self):
        self._floor = 0.0  # what the lane picked last had been charged: where an idle lane starts again
        self._turns = itertools.count()

    def pick(self, ready: list):
        """The lane to run next among `ready` (each with work waiting); None when empty.

        The lane charged least; on a tie, the one that ran least recently,
        then the one with the oldest item. A lane that had no work starts
        again level with the lane picked last, not with credit for its idle
        time: it runs next, but cannot then keep the device for as long as
        it was idle.
        """
        if not ready:
            return None
        for lane in ready:
            lane.served_s = max(lane.served_s, self._floor)
        best = min(ready, key=lambda lane: (lane.served_s, lane.last_turn, lane.waiting[0].seq))
        self._floor = best.served_s
        return best

    def charge(self, lane, seconds: float) -> None:
        """`lane` ran a batch that took `seconds`."""
        lane.served_s += seconds
        lane.last_turn = next(self._turns)
