"""WORKER_DEVICE selection."""

import pytest

from model_store.devices import resolve_device


@pytest.mark.parametrize("setting, available, count, expected", [
    ("cpu", True, 2, "cpu"),
    ("auto", False, 0, "cpu"),
    ("auto", True, 4, "cuda:0"),
    ("cuda", True, 1, "cuda:0"),
    ("cuda:3", True, 4, "cuda:3"),
])
def test_resolve(setting, available, count, expected):
    assert resolve_device(setting, available, count) == expected


@pytest.mark.parametrize("setting, available, count", [("cuda", False, 0), ("cuda:2", True, 2)])
def test_missing_gpu_is_an_error_not_a_cpu_fallback(setting, available, count):
    with pytest.raises(ValueError, match="CUDA device"):
        resolve_device(setting, available, count)


def test_run_command_starts_one_worker_per_gpu_named_after_it():
    from devtools.stack import worker_plan

    assert worker_plan(0) == [("cpu", "cpu")]
    assert worker_plan(2) == [("cuda0", "cuda:0"), ("cuda1", "cuda:1")]
