"""Timing a model on this device when it is loaded: the points its cost model starts from.

Runs on the device thread like every forward pass, before the model's
first job; it also warms the kernels up for the shapes it times. The fit
itself is tasks/costmodel.py's.
"""

from __future__ import annotations

import logging
import time

from tasks.costmodel import CostModel

log = logging.getLogger(__name__)

# Shapes timed at load: (items, tokens). Small enough to take about a
# second on a laptop CPU, spread enough to pin down all four terms.
CALIBRATION_SHAPES = ((1, 16), (1, 128), (4, 32), (8, 64), (16, 16), (16, 64), (32, 32), (64, 32), (32, 128))
# Every shape is timed in this many interleaved rounds (one pass per shape
# each), so a burst of load spoils one of its timings, not all of them ...
CALIBRATION_ROUNDS = 2
# ... and a shape whose two fastest timings differ by more than this is
# timed again, at most EXTRA_ROUNDS times: on a quiet machine they agree
# and calibration costs what two rounds cost.
SETTLED = 0.1
EXTRA_ROUNDS = 3


def measure(timed, shapes=CALIBRATION_SHAPES) -> list[tuple[int, int, float]]:
    """(items, length, seconds) per shape: the fastest timing of `timed(items, length)`.

    A forward pass is deterministic, so its fastest timing is the one least
    disturbed by the rest of the machine; rounds go over all the shapes in
    turn, so that one burst of load hits a shape once, not in every try.
    """
    times: dict[tuple[int, int], list[float]] = {shape: [] for shape in shapes}
    for _ in range(CALIBRATION_ROUNDS):
        for shape in times:
            times[shape].append(timed(*shape))
    for _ in range(EXTRA_ROUNDS):
        unsettled = [shape for shape, seen in times.items() if not _settled(seen)]
        if not unsettled:
            break
        for shape in unsettled:
            times[shape].append(timed(*shape))
    return [(items, length, min(seen)) for (items, length), seen in times.items()]


def _settled(seen: list[float]) -> bool:
    """The fastest timing is confirmed by a second one close to it."""
    first, second = sorted(seen)[:2]
    return second <= first * (1 + SETTLED)


def calibrate(runner, cost: CostModel, name: str, max_items: int, max_tokens: int) -> None:
    """Fit `cost` from a few timed batch shapes of `runner` (device thread).

    A runner that fails here still serves: `cost` keeps its defaults, and
    batches are as large as the caps allow.
    """
    limit = getattr(runner, "max_length", 512)
    try:
        params = getattr(runner, "calibration_params", {})
        runner.run([runner.dummy_encoding(min(32, limit))] * 4, params)  # warm-up

        def timed(items: int, length: int) -> float:
            batch = [runner.dummy_encoding(length)] * items
            started = time.perf_counter()
            runner.run(batch, params)
            return time.perf_counter() - started

        shapes = list(dict.fromkeys((items, min(length, limit)) for items, length in CALIBRATION_SHAPES))
        cost.calibrate(measure(timed, shapes))
    except Exception:  # noqa: BLE001 - a model that cannot calibrate still serves
        log.exception("calibration of %s failed; batches will be as large as the caps allow", name)
        return
    log.info("%s: forward cost %s; best batch at 32 tokens: %d items, at 128 tokens: %d",
             name, cost.describe(), cost.best_batch(32, max_items, max_tokens),
             cost.best_batch(128, max_items, max_tokens))
