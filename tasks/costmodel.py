"""How long a forward pass takes, learned per model and device.

    t(c, L) = a + b*c*L + g*c*L*L + d*(c*L)**2

for a batch of c items padded to L tokens: a fixed cost per call (Python and
kernel launch overhead), a cost per padded token, attention's cost per token
and position, and a term for the slowdown of very large batches (on this
machine's CPU, tokens/s fell by ~20% past ~4k padded tokens per call). The
planner asks it which batch gives the most items per second, so the batch
budget comes from measurement, not from a guess: it is calibrated when a
model is loaded and refitted online from the batches the worker runs.

Timings on a busy machine are only ever too slow (another process loading a
model, a GC pause), never too fast, and a few such points once made a worker
choose batches of 63 items at 128 tokens where 9 was best. So calibration
(tasks/calibration.py) takes each shape's fastest of interleaved rounds, and
the fit weighs every point by how well it agrees with the rest, dropping
those far off.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

# Refit after this many new observed batches, over at most this many: often
# enough that a badly calibrated model is corrected within a few dozen
# batches, while a fit (about half a millisecond, on the device thread)
# stays rare next to them ...
REFIT_EVERY = 8
HISTORY = 256
# ... and only once those batches took this long together: for a model
# whose batches take a millisecond, a fit every 8 would cost 6% of the
# device thread's time (tiny-embed at one client); this keeps it near 2%.
REFIT_AFTER_S = 0.025
# The robust fit: a point's relative error is measured in units of the
# median error (at least FLOOR, the jitter of a quiet machine); points past
# CUTOFF units get no weight (Tukey's biweight), after ROBUST_ROUNDS passes.
FLOOR = 0.05
CUTOFF = 4.685
ROBUST_ROUNDS = 8


def features(items: np.ndarray, length: np.ndarray) -> np.ndarray:
    """The fit's design matrix: a row (1, N, N*L, N**2) per batch, N = items*length padded tokens."""
    tokens = items * length
    return np.column_stack([np.ones_like(tokens), tokens, tokens * length, tokens * tokens])


def seconds(coef: tuple[float, float, float, float], items: int, length: int) -> float:
    """t(c, L) for coefficients (a, b, g, d), in plain floats: the planner asks it often."""
    a, b, g, d = coef
    tokens = items * length
    return a + tokens * (b + g * length + d * tokens)


class CostModel:
    """Fitted forward-pass time in seconds for (items, padded length)."""

    def __init__(self, coef=(1e-3, 1e-6, 0.0, 0.0)):
        self._set(coef)
        self._quiet = self._live  # the fit of the calibration alone (see quiet_time)
        self._calibration: list[tuple[int, int, float]] = []
        self._observed: deque = deque(maxlen=HISTORY)
        self._new = 0
        self._new_s = 0.0  # the new batches' seconds
        self._lock = threading.Lock()

    def _set(self, coef) -> None:
        self.coef = np.asarray(coef, dtype=float)
        self._live = tuple(float(v) for v in self.coef)

    def time(self, items: int, length: int) -> float:
        """Predicted seconds for a batch of `items` padded to `length` tokens."""
        return seconds(self._live, items, length)

    def quiet_time(self, items: int, length: int) -> float:
        """Predicted seconds from the calibration alone: the batch's work as timed at load.

        `time` follows what batches take now, on however busy a machine and
        however many threads they ran on; this one stays what the batch
        costs the whole pool on a machine left to it, which is what
        deciding whether to split a batch over the pool needs (tasks/intraop.py).
        """
        return seconds(self._quiet, items, length)

    def fit(self, samples) -> None:
        """Robust least squares on relative error, every term kept non-negative.

        Iteratively reweighted: each pass weighs a point down by how far it
        lies from the previous fit, relative to the median distance, so a
        few timings spoilt by load (or a consistent majority of observed
        batches against a wrong calibration) decide nothing alone.
        """
        samples = list(samples)
        if len(samples) < 4:
            return
        items, length, y = np.array(samples, dtype=float).T
        x = features(items, length)
        scale = 1.0 / np.maximum(y, 1e-6)  # relative error: small batches matter as much
        weight = np.ones(len(y))
        coef = _nonnegative_lstsq(x * scale[:, None], y * scale)
        for _ in range(ROBUST_ROUNDS):
            predicted = np.maximum(x @ coef, 1e-9)
            error = y / predicted - 1.0
            spread = max(FLOOR, 1.4826 * float(np.median(np.abs(error))))
            u = error / (CUTOFF * spread)
            previous, weight = weight, np.where(np.abs(u) < 1, (1 - u * u) ** 2, 0.0)
            if np.count_nonzero(weight) < 4 or np.abs(weight - previous).max() < 0.01:
                break
            w = scale * weight
            coef = _nonnegative_lstsq(x * w[:, None], y * w)
        if coef[0] <= 0 and coef[1] <= 0:
            return  # a degenerate fit would make every batch look free
        self._set(coef)

    def calibrate(self, samples) -> None:
        """Start from timings made at load: (items, length, seconds)."""
        self._calibration = list(samples)
        self.fit(self._calibration)
        self._quiet = self._live

    def observe(self, items: int, length: int, seconds: float) -> None:
        """Learn from a batch the worker ran; refit now and then."""
        with self._lock:
            self._observed.append((items, length, seconds))
            self._new += 1
            self._new_s += seconds
            if self._new < REFIT_EVERY or self._new_s < REFIT_AFTER_S:
                return
            self._new, self._new_s = 0, 0.0
            samples = self._calibration + list(self._observed)
        self.fit(samples)

    def best_batch(self, length: int, max_items: int, max_tokens: int) -> int:
        """Items per batch that maximise items/s at this padded length."""
        best, best_rate = 1, 0.0
        for c in range(1, max_items + 1):
            if c > 1 and c * length > max_tokens:
                break
            rate = c / max(self.time(c, length), 1e-9)
            if rate > best_rate * 1.001:
                best, best_rate = c, rate
        return best

    def describe(self) -> dict:
        a, b, g, d = (float(v) for v in self.coef)
        return {"call_ms": round(a * 1e3, 3), "token_us": round(b * 1e6, 3),
                "attention_ns": round(g * 1e9, 4), "large_batch_ps": round(d * 1e12, 5)}


def _nonnegative_lstsq(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0: drop negative terms until none is left."""
    active = list(range(x.shape[1]))
    coef = np.zeros(x.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(x[:, active], y, rcond=None)
        if (sol >= 0).all():
            coef[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    return coef
