"""The forward-time model the planner uses to choose batch sizes."""

import pytest

from tasks.costmodel import CostModel


def synthetic(a=4e-3, b=9e-5, g=2.5e-8, d=1.5e-9):
    return lambda c, n: a + b * c * n + g * c * n * n + d * (c * n) ** 2


def test_fit_recovers_a_known_cost():
    truth = synthetic()
    samples = [(c, n, truth(c, n)) for c in (1, 2, 4, 8, 16, 32, 64) for n in (8, 32, 128)]
    model = CostModel()
    model.calibrate(samples)
    for c, n, t in samples:
        assert model.time(c, n) == pytest.approx(t, rel=0.02)


def test_best_batch_shrinks_as_sequences_grow():
    """Per-call overhead favours big batches; the large-batch slowdown caps them."""
    truth = synthetic()
    model = CostModel()
    model.calibrate([(c, n, truth(c, n)) for c in (1, 4, 16, 64) for n in (16, 64, 256)])
    short, long_ = model.best_batch(16, 256, 1 << 20), model.best_batch(128, 256, 1 << 20)
    assert 1 < long_ < short < 256
    assert model.best_batch(16, 8, 1 << 20) == 8  # MAX_BATCH_SIZE caps the learned budget
    assert model.best_batch(128, 256, 512) == 4  # and so does MAX_BATCH_TOKENS


def test_online_observations_move_the_fit():
    """Batches run on a slower device than calibrated for pull the model towards them."""
    model = CostModel()
    model.calibrate([(c, n, synthetic()(c, n)) for c in (1, 8, 32) for n in (16, 64)])
    before = model.time(16, 32)
    slower = synthetic(a=8e-3, b=2e-4)
    for _ in range(4):
        for c, n in ((1, 16), (8, 32), (16, 32), (32, 64), (4, 128), (2, 8), (16, 16), (64, 16)):
            model.observe(c, n, slower(c, n))
    assert model.time(16, 32) > 1.5 * before


def test_fit_never_goes_negative():
    model = CostModel()
    model.calibrate([(1, 10, 0.005), (2, 10, 0.005), (4, 10, 0.0051), (8, 10, 0.0052), (16, 10, 0.006)])
    assert (model.coef >= 0).all() and model.time(1, 1) > 0
