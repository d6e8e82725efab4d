"""The assignment function: model placements + live workers + current placements -> placement changes."""

from common.assignment import DROP, WANT, Change, WorkerLoad, assign, convergence
from common.placement import ModelPlacement, check_placement


def wl(name, placed=(), serving=None, capacity=4, failed=(), free=None):
    placed = frozenset(placed)
    return WorkerLoad(name, placed, frozenset(placed if serving is None else serving), frozenset(failed), capacity,
                      free)


def replicas(n, model_id="m", task=None):
    return ModelPlacement(model_id, replicas=n, task=task)


def apply(workers, changes):
    """The workers after `changes`, as each one's reconcile would make them (placed = serving)."""
    placed = {w.name: set(w.placed) for w in workers}
    for c in changes:
        (placed[c.worker].add if c.action == WANT else placed[c.worker].discard)(c.model_id)
    return [wl(w.name, placed[w.name], capacity=w.capacity) for w in workers]


def holders(workers, model_id="m"):
    return sorted(w.name for w in workers if model_id in w.placed)


def test_replicas_go_to_the_least_loaded_workers_by_name():
    """Two replicas over three workers: the two with fewest models; ties by name."""
    workers = [wl("a", {"x", "y"}), wl("b", {"x"}), wl("c")]
    assert assign([replicas(2, task="fill-mask")], workers) == [Change(WANT, "c", "m", "fill-mask"),
                                                                 Change(WANT, "b", "m", "fill-mask")]
    assert assign([replicas(2)], [wl("b"), wl("a"), wl("c")]) == [Change(WANT, "a", "m"), Change(WANT, "b", "m")]


def test_a_converged_placement_changes_nothing():
    """No flapping: applying the decision and deciding again gives no change."""
    workers = [wl("a", {"x"}), wl("b"), wl("c"), wl("d", {"x", "y"})]
    placements = [replicas(2), replicas(3, "x"), replicas(1, "z")]
    after = apply(workers, assign(placements, workers))
    assert assign(placements, after) == []
    assert [len(holders(after, m)) for m in ("m", "x", "z")] == [2, 3, 1]


def test_a_worker_still_loading_counts_as_a_replica():
    """Placed but not yet serving is a replica: no second worker is picked while the first load runs."""
    workers = [wl("a", {"m"}, serving=()), wl("b")]
    assert assign([replicas(1)], workers) == []


def test_no_room_no_replica():
    """MAX_MODELS_PER_WORKER full, or too little free device memory: the worker is skipped."""
    workers = [wl("a", {"x"}, capacity=1), wl("b", free=100), wl("c", free=10_000)]
    assert assign([replicas(3)], workers, sizes={"m": 5000}) == [Change(WANT, "c", "m")]
    # Free memory is spent as replicas are placed: two 5000-byte models do not both fit in 8000.
    two = [replicas(1, "m"), replicas(1, "n")]
    assert assign(two, [wl("a", free=8000), wl("b", free=6000)], sizes={"m": 5000, "n": 5000}) == [
        Change(WANT, "a", "m"), Change(WANT, "b", "n")]


def test_more_replicas_than_workers_takes_every_worker_with_room():
    assert assign([replicas(5)], [wl("a"), wl("b")]) == [Change(WANT, "a", "m"), Change(WANT, "b", "m")]


def test_a_dead_holder_is_replaced_and_dropped():
    """The dead worker's placement loses the model in the same round the replacement is chosen."""
    live = [wl("a", {"m"}), wl("c")]
    assert assign([replicas(2)], live, elsewhere={"m": ["b"]}) == [Change(DROP, "b", "m"), Change(WANT, "c", "m")]


def test_lowering_replicas_trims_the_ones_not_serving_then_the_most_loaded():
    workers = [wl("a", {"m", "x", "y"}), wl("b", {"m"}), wl("c", {"m"}, serving=()), wl("d", {"m", "x"})]
    assert assign([replicas(2)], workers) == [Change(DROP, "a", "m"), Change(DROP, "c", "m")]


def test_a_comeback_is_trimmed_not_the_worker_that_serves():
    """A worker back with the model in its placement (loading it again) is the one dropped."""
    workers = [wl("a", {"m"}, serving=()), wl("b", {"m"}), wl("c", {"m"})]
    assert assign([replicas(2)], workers) == [Change(DROP, "a", "m")]


def test_a_worker_that_failed_to_load_it_is_not_chosen_again():
    workers = [wl("a", failed={"m"}), wl("b", {"x", "y"})]
    assert assign([replicas(1)], workers) == [Change(WANT, "b", "m")]


def test_pinned_workers_get_it_and_no_other_worker_keeps_it():
    """Pinned: the named workers, live or not (a worker not started yet loads it at start), nobody else."""
    placement = ModelPlacement("m", workers=("b", "later"))
    workers = [wl("a", {"m"}), wl("b", capacity=0)]
    assert assign([placement], workers, elsewhere={"m": ["gone"]}) == [
        Change(DROP, "gone", "m"), Change(DROP, "a", "m"), Change(WANT, "b", "m"), Change(WANT, "later", "m")]
    assert assign([placement], [wl("a"), wl("b", {"m"})], elsewhere={"m": ["later"]}) == []


def test_models_are_decided_in_id_order_against_the_loads_left_by_the_previous():
    """Capacity is shared: with one slot each, three models of one replica land on three workers."""
    workers = [wl("a", capacity=1), wl("b", capacity=1), wl("c", capacity=1)]
    changes = assign([replicas(1, "z"), replicas(1, "x"), replicas(1, "y")], workers)
    assert changes == [Change(WANT, "a", "x"), Change(WANT, "b", "y"), Change(WANT, "c", "z")]


def test_convergence_compares_serving_with_desired():
    live = {"a": {"models": {"m": {}}}, "b": {"models": {}}, "c": {"models": {"m": {}}}}
    status = convergence(replicas(2), live, ["a", "b"])
    assert status["assigned_to"] == ["a", "b"] and status["serving_on"] == ["a", "c"]
    assert status["converged"] is False
    assert convergence(replicas(2), live, ["a", "c", "dead"])["converged"] is True
    assert convergence(replicas(3), live, ["a", "c"])["converged"] is False  # short of workers
    pinned = convergence(ModelPlacement("m", workers=("a", "c", "off")), live, ["a", "c"])
    assert pinned["converged"] is True and pinned["not_live"] == ["off"]


def test_check_placement_names_the_problem():
    assert check_placement(2, None) is None and check_placement(None, ["w1@h", "w2@h"]) is None
    assert "not both" in check_placement(2, ["w"]) and "not both" in check_placement(None, None)
    for bad in (-1, 1001, True, 2.0, "2"):
        assert "whole number between 0 and 1000" in check_placement(bad, None), bad
    assert "list of 1 to 1000" in check_placement(None, [])
    assert "not a worker name" in check_placement(None, ["has space"])
    assert "twice" in check_placement(None, ["a", "a"])
