"""How many of torch's intra-op threads a batch on the CPU runs on.

torch runs every operator of a forward pass on its OpenMP pool, one
thread per core by default. A batch that takes a few milliseconds gains
little from the pool, since each operator is too small to split, and
pays for it: at every operator the pool's threads are woken, joined and
left spinning, on cores the webapp, Redis and the other processes need.
So a batch the lane's cost model predicts under SMALL_BATCH_S runs on one
thread, and a larger one on the whole pool, where splitting pays (minilm,
in-process on 2 cores: a batch of 8 took 31 ms on 2 threads, 43 ms on 1).
README "Benchmark" gives the figures through HTTP.

The prediction is the calibration's (CostModel.quiet_time), not the one
observed batches keep refitting: those run slower on a busy machine and on
one thread, so the live prediction rose under load and sent more small
batches to the pool, the more so the busier the machine: on tiny-embed
(64 clients, then one), four runs sent 36 to 108 batches of 920 to 1,531
to the pool; four with the calibration's prediction, 2 to 15 of 1,001 to
1,375.

Only on the CPU (a GPU's forward does not use the pool), only when the
pool has more than one thread (OMP_NUM_THREADS=1 already says one), and
only on the device thread, the one that runs passes. Calibration runs on
the whole pool, so the cost model describes what large batches get.
"""

from __future__ import annotations

# Predicted batch time below which one thread runs it (seconds).
SMALL_BATCH_S = 0.005


class IntraOpThreads:
    """Sets torch's thread count per batch; changes it only when it differs."""

    def __init__(self, small_batch_s: float = SMALL_BATCH_S):
        self.small_batch_s = small_batch_s
        self._torch = None
        self.pool = 0  # torch's thread count when first asked: the whole pool
        self._current = 0

    def for_batch(self, device, predicted_s: float) -> int:
        """Threads for a batch on `device` predicted to take `predicted_s`; 0 where this does not apply."""
        if getattr(device, "type", str(device)) != "cpu" or not self._ready():
            return 0
        return self._set(1 if predicted_s < self.small_batch_s else self.pool)

    def whole_pool(self) -> None:
        """Back to the whole pool (before timing a model)."""
        if self._ready():
            self._set(self.pool)

    def _ready(self) -> bool:
        if self._torch is None:
            import torch  # loaded by then: a model is

            self._torch = torch
            self.pool = self._current = torch.get_num_threads()
        return self.pool > 1

    def _set(self, threads: int) -> int:
        if threads != self._current:
            self._torch.set_num_threads(threads)
            self._current = threads
        return threads
