"""Batch planning and failure isolation, as pure functions."""

from tasks.planning import Item, padded_tokens, plan_batch, run_isolating


def items(lengths, params=None):
    params = params or ["p"] * len(lengths)
    return [Item(f"job{i}", 0, None, n, params[i], i) for i, n in enumerate(lengths)]


def test_oldest_first_up_to_max_items():
    """A batch takes the oldest items, at most max_items of them."""
    waiting = items([5] * 10)
    batch = plan_batch(waiting, max_items=4, max_tokens=10_000)
    assert [it.seq for it in batch] == [0, 1, 2, 3]


def test_token_budget_caps_padded_tokens():
    """items x longest never exceeds max_tokens; a long item waits for a later batch."""
    waiting = items([10, 10, 100, 10, 10])
    batch = plan_batch(waiting, max_items=32, max_tokens=50)
    assert [it.seq for it in batch] == [0, 1, 3, 4]
    assert padded_tokens(batch) <= 50


def test_oldest_item_runs_even_over_budget():
    """An item longer than the whole budget still runs, alone."""
    batch = plan_batch(items([500, 5]), max_items=32, max_tokens=100)
    assert [it.seq for it in batch] == [0]


def test_only_equal_parameters_share_a_batch():
    """The oldest item's parameters decide the group."""
    waiting = items([5] * 5, params=["a", "b", "a", "b", "a"])
    assert [it.seq for it in plan_batch(waiting, 32, 10_000)] == [0, 2, 4]


def test_empty():
    assert plan_batch([], 4, 100) == []


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
