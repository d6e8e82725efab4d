"""How long a forward pass takes, learned per model and device.

    t(c, L) = a + b*c*L + g*c*L*L + d*(c*L)**2

for a batch of c items padded to L tokens: a fixed cost per call (Python and
kernel launch overhead), a cost per padded token, attention's cost per token
and position, and a term for the slowdown of very large batches (on this
machine's CPU, tokens/s fell by ~20% past ~4k padded tokens per call). The
planner asks it which batch gives the most items per second, so the batch
budget comes from measurement, not from a guess: it is calibrated when a
model is loaded and refitted online from the batches the worker runs.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

# Shapes timed at load: (items, tokens). Small enough to take about a
# second on a laptop CPU, spread enough to pin down all four terms.
CALIBRATION_SHAPES = ((1, 16), (1, 128), (4, 32), (8, 64), (16, 16), (16, 64), (32, 32), (64, 32), (32, 128))
# Refit after this many new observed batches, over at most this many.
REFIT_EVERY = 32
HISTORY = 512


def features(items: int, length: int) -> np.ndarray:
    tokens = items * length
    return np.array([1.0, tokens, tokens * length, tokens * tokens], dtype=float)


class CostModel:
    """Fitted forward-pass time in seconds for (items, padded length)."""

    def __init__(self, coef=(1e-3, 1e-6, 0.0, 0.0)):
        self._set(coef)
        self._calibration: list[tuple[int, int, float]] = []
        self._observed: deque = deque(maxlen=HISTORY)
        self._new = 0
        self._lock = threading.Lock()

    def _set(self, coef) -> None:
        self.coef = np.asarray(coef, dtype=float)
        self._a, self._b, self._g, self._d = (float(v) for v in self.coef)
        self._ideal: dict[tuple[int, int], float] = {}

    def time(self, items: int, length: int) -> float:
        """Predicted seconds for a batch of `items` padded to `length` tokens."""
        tokens = items * length
        return self._a + tokens * (self._b + self._g * length + self._d * tokens)

    def ideal(self, length: int, max_items: int = 256) -> float:
        """Seconds per item at this length in the best batch of equal lengths.

        The planner weighs each item by this: an item padded far beyond its
        own length costs more than it is worth.
        """
        key = (length, max_items)
        value = self._ideal.get(key)
        if value is None:
            value = min(self.time(c, length) / c for c in range(1, max_items + 1))
            self._ideal[key] = value
        return value

    def fit(self, samples) -> None:
        """Least squares on relative error, every term kept non-negative."""
        samples = list(samples)
        if len(samples) < 4:
            return
        x = np.array([features(c, n) for c, n, _ in samples])
        y = np.array([t for _, _, t in samples])
        w = 1.0 / np.maximum(y, 1e-6)  # relative error: small batches matter as much
        active = list(range(x.shape[1]))
        coef = np.zeros(x.shape[1])
        while active:  # drop negative terms until all that remain are >= 0
            sol, *_ = np.linalg.lstsq(x[:, active] * w[:, None], y * w, rcond=None)
            if (sol >= 0).all():
                coef[:] = 0
                coef[active] = sol
                break
            active.pop(int(np.argmin(sol)))
        if coef[0] <= 0 and coef[1] <= 0:
            return  # a degenerate fit would make every batch look free
        self._set(coef)

    def calibrate(self, samples) -> None:
        """Start from timings made at load: (items, length, seconds)."""
        self._calibration = list(samples)
        self.fit(self._calibration)

    def observe(self, items: int, length: int, seconds: float) -> None:
        """Learn from a batch the worker ran; refit now and then."""
        with self._lock:
            self._observed.append((items, length, seconds))
            self._new += 1
            if self._new < REFIT_EVERY:
                return
            self._new = 0
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
