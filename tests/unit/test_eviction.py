"""Eviction past MAX_MODELS_PER_WORKER: who may go, and the on-demand flag's way to the manager."""

from types import SimpleNamespace

from tasks.control import load_model
from tasks.model_manager import least_recently_used


def test_least_recently_used_leaves_out_what_is_kept():
    last_used = {"pre": 1.0, "a": 5.0, "b": 3.0}  # "never" ran counts as the oldest
    assert least_recently_used(["pre", "a", "b"], last_used) == "pre"
    assert least_recently_used(["pre", "a", "b"], last_used, keep={"pre"}) == "b"
    assert least_recently_used(["pre", "a", "b", "new"], last_used, keep={"pre"}) == "new"
    assert least_recently_used(["pre"], last_used, keep={"pre"}) is None
    assert least_recently_used([], last_used) is None


def test_load_command_passes_on_demand_only_when_the_webapp_says_so():
    """The broadcast's `on_demand: true` reaches the manager; the CLI (strings) and admin loads never set it."""
    calls = []
    manager = SimpleNamespace(request_load=lambda model_id, task, on_demand: calls.append(on_demand) or {})
    state = SimpleNamespace(consumer=SimpleNamespace(atf_serving=SimpleNamespace(manager=manager)))
    load_model(state, "m", None, on_demand=True)
    load_model(state, "m", None)
    load_model(state, "m", "feature_extraction", on_demand="True")  # not a JSON true
    assert calls == [True, False, False]
