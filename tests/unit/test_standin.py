"""The benchmark's stand-in model (model_store/standin.py) and the scaling section of RESULTS.md."""

from __future__ import annotations

import time

import pytest

from bench.scaling import BEGIN, END, section_of, with_section
from model_store.demo import build_demo
from model_store.loader import load_runner
from model_store.loader.standin import StandInRunner
from model_store.standin import build_stand_in
from model_store.store import ModelStore


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("standin-models")
    build_demo(root, ["minilm"])  # its tokenizer
    build_stand_in(root / "standin", root / "minilm", forward_s=0.12)
    return ModelStore(root)


def test_a_stand_in_batch_lasts_its_forward_time_whatever_its_size(store):
    info = store.describe("standin")
    assert info.task == "feature-extraction" and info.extra["stand_in_forward_s"] == 0.12
    runner = load_runner(info, "cpu")
    assert isinstance(runner, StandInRunner)
    for texts in (["one sentence"], ["four", "different", "short", "sentences, of some length"]):
        encodings = runner.encode(texts, {})
        started = time.perf_counter()
        outputs = runner.run(encodings, {"pooling": "mean"})
        assert time.perf_counter() - started >= 0.12
        assert len(outputs) == len(texts) and all(o.shape == (32,) for o in outputs)


def test_a_demo_model_is_no_stand_in(store):
    info = store.describe("minilm")
    assert info.extra["stand_in_forward_s"] is None
    assert type(load_runner(info, "cpu")) is not StandInRunner


def test_the_scaling_section_is_replaced_and_the_rest_kept():
    text = "# Benchmark results\n\nfigures\n"
    once = with_section(text, "## Scaling\nfirst")
    twice = with_section(once, "## Scaling\nsecond")
    assert twice.startswith(text) and "first" not in twice and twice.count(BEGIN) == 1
    assert section_of(twice) == f"{BEGIN}\n## Scaling\nsecond\n{END}\n"
    assert section_of(text) == ""
