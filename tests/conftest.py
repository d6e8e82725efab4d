"""Shared test setup: the repository root on sys.path, hub access off; and the session
fixtures of the integration and fault suites — a Redis, the demo models, a log folder.

Nothing is faked: the models are built by the real CLI, and the Redis is a
private Redis-compatible server started for the session (or TEST_REDIS_URL,
whose database is flushed first).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from devtools.processes import PYTHON  # noqa: E402
from devtools.redis_server import EmbeddedRedis  # noqa: E402


@pytest.fixture(scope="session")
def redis_url():
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        redis.Redis.from_url(url).flushdb()
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture(scope="module")
def private_redis_url():
    """A Redis of the module's own, for tests that plant state the session's live workers
    and webapps would act on (their reapers sweep every stale holder they see)."""
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """The demo models built by the real CLI, plus test-only models and ids (see below)."""
    root = tmp_path_factory.mktemp("models")
    env = dict(os.environ, MODEL_DIR=str(root), PYTHONPATH=str(ROOT))
    out = subprocess.run([PYTHON, "-m", "model_store", "build-demo"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    (root.parent / "build-demo.log").write_text(out.stdout)
    # More ids for the same files, for tests that need a queue of their own.
    for alias in ("minilm-b", "minilm-c", "minilm-traced", "minilm-jsonlog"):
        (root / alias).symlink_to(root / "minilm", target_is_directory=True)
    build_poisoned_model(root / "minilm", root / "tiny-poison")
    build_second_version(root / "minilm", root / "minilm-v2")
    return root


def build_second_version(source: Path, target: Path) -> None:
    """`minilm-v2`: minilm with its last layer's output weights scaled, a new version to switch to."""
    import shutil

    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(source)
    with torch.no_grad():
        model.encoder.layer[-1].output.dense.weight.mul_(1.5)
    model.save_pretrained(target)
    for path in source.iterdir():
        if path.is_file() and not (target / path.name).exists():
            shutil.copy(path, target / path.name)
    shutil.copytree(source / "1_Pooling", target / "1_Pooling")


def build_poisoned_model(tokenizer_from: Path, target: Path) -> None:
    """A tiny random BERT whose embeddings stop 22 ids short of its tokenizer's vocabulary.

    Ordinary English runs; a text with a full-width character glued to a
    word (e.g. "word～", token id 30521) makes the forward pass raise
    IndexError. A real model defect, for testing how one bad item is isolated.
    """
    from transformers import BertConfig, BertModel

    from model_store.tiny import copy_bert_tokenizer

    config = BertConfig(vocab_size=30500, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(target)
    copy_bert_tokenizer(tokenizer_from, target)


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("logs")


@pytest.fixture
def rdb(redis_url):
    return redis.Redis.from_url(redis_url)
