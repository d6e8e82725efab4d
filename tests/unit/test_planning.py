"""Batch planning and failure isolation, as pure functions."""

from tasks.costmodel import CostModel
from tasks.planning import Item, padded_tokens, plan_batch, run_isolating

# 1 ms per call, 1 us per padded token: bigger batches are cheaper per item.
CHEAP_CALLS = CostModel((1e-3, 1e-6, 0.0, 0.0))


def items(lengths, params=None):
    params = params or ["p"] * len(lengths)
    return [Item(f"job{i}", 0, None, n, params[i], i) for i, n in enumerate(lengths)]


def test_oldest_first_up_to_max_items():
    """A batch takes the oldest items, at most max_items of them."""
    waiting = items([5] * 10)
    batch = plan_batch(waiting, max_items=4, max_tokens=10_000, cost=CHEAP_CALLS)
    assert [it.seq for it in batch] == [0, 1, 2, 3]


def test_token_budget_caps_padded_tokens():
    """items x longest never exceeds max_tokens; a long item waits for a later batch."""
    waiting = items([10, 10, 100, 10, 10])
    batch = plan_batch(waiting, max_items=32, max_tokens=50, cost=CHEAP_CALLS)
    assert [it.seq for it in batch] == [0, 1, 3, 4]
    assert padded_tokens(batch) <= 50


def test_oldest_item_runs_even_over_budget():
    """An item longer than the whole budget still runs, alone."""
    batch = plan_batch(items([500, 5]), max_items=32, max_tokens=100, cost=CHEAP_CALLS)
    assert [it.seq for it in batch] == [0]


def test_only_equal_parameters_share_a_batch():
    """The oldest item's parameters decide the group."""
    waiting = items([5] * 5, params=["a", "b", "a", "b", "a"])
    assert [it.seq for it in plan_batch(waiting, 32, 10_000, CHEAP_CALLS)] == [0, 2, 4]


def test_empty():
    assert plan_batch([], 4, 100, CHEAP_CALLS) == []


def test_run_isolating_fails_only_the_poisoned_item():
    """A batch that raises is split until the bad item is alone; others get outputs."""
    batch = items([1] * 20)
    poisoned = batch[13]
    outputs, errors = {}, {}

    def run(group):
        if poisoned in group:
            raise ValueError("bad item")
        return [f"out{it.seq}" for it in group]

    def on_outputs(group, outs):
        outputs.update({it.seq: out for it, out in zip(group, outs)})

    def on_error(item, exc):
        errors[item.seq] = exc

    passes = run_isolating(batch, run, on_outputs, on_error)
    assert set(errors) == {13}
    assert outputs == {i: f"out{i}" for i in range(20) if i != 13}
    assert passes <= 2 * 5 + 1  # about 2*log2(20) passes, not 20


def test_run_isolating_one_pass_when_healthy():
    batch = items([1] * 8)
    got = []
    assert run_isolating(batch, lambda g: [0] * len(g), lambda g, o: got.extend(g), None) == 1
    assert got == batch


def test_companions_are_the_closest_lengths():
    """Around the oldest item, the batch takes the items nearest in length."""
    waiting = items([50, 10, 10, 50, 10, 49, 50])
    batch = plan_batch(waiting, max_items=4, max_tokens=10_000, cost=CHEAP_CALLS)
    assert sorted(it.length for it in batch) == [49, 50, 50, 50]
    assert waiting[0] in batch


def test_cost_model_refuses_a_batch_that_pads_too_much():
    """Two short items beat three when the third would pad both to 200 tokens."""
    waiting = items([10, 10] + [200] * 10)
    batch = plan_batch(waiting, max_items=32, max_tokens=100_000, cost=CostModel((1.0, 0.1, 0.0, 0.0)))
    assert [it.length for it in batch] == [10, 10]


def test_cost_model_takes_a_full_batch_when_lengths_match():
    waiting = items([30] * 40)
    batch = plan_batch(waiting, max_items=16, max_tokens=100_000, cost=CostModel((4.0, 0.09, 0.0, 0.0)))
    assert len(batch) == 16 and batch[0] is waiting[0]


def test_cost_model_stops_where_big_batches_slow_down():
    """With a large-batch slowdown in the cost, equal items split near the best size."""
    cost = CostModel((4e-3, 9e-5, 0.0, 1.5e-9))
    best = cost.best_batch(32, 256, 1 << 20)
    batch = plan_batch(items([32] * 200), max_items=256, max_tokens=1 << 20, cost=cost)
    assert 8 < best < 200 and abs(len(batch) - best) <= best // 2
