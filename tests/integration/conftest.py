"""Integration fixtures: a private Redis, the demo model, real worker and webapp processes.

Nothing is faked: the worker is `celery -A tasks worker` and the webapp is
`gunicorn 'webapp:create_app()'`, both as subprocesses, talking through a
Redis-compatible server started for this test session (or TEST_REDIS_URL,
whose database is flushed first). Tests stay independent through unique
job ids and by reading counters as differences.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import redis
import requests

from common.protocol import batch_stats_key
from devtools import processes
from devtools.processes import PYTHON, ROOT, Webapp, Worker  # noqa: F401  (used by the tests)
from devtools.redis_server import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_url():
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        redis.Redis.from_url(url).flushdb()
        yield url
        return
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
    for alias in ("minilm-b", "minilm-c"):  # more ids for the same files, for tests that need their own
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
    import shutil

    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=30500, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(target)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(tokenizer_from / name, target / name)


def service_env(redis_url: str, model_dir: Path, **settings) -> dict:
    """A service's environment for tests: fast heartbeats so dead workers show quickly."""
    return processes.service_env(redis_url, model_dir, **{"heartbeat_s": 0.5, **settings})


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def worker(redis_url, model_dir, log_dir):
    """The session's worker, serving `minilm`."""
    w = Worker("main", service_env(redis_url, model_dir, preload_models="minilm"), log_dir).wait_ready()
    yield w
    w.stop()


@pytest.fixture(scope="session")
def webapp(redis_url, model_dir, log_dir):
    app = Webapp(service_env(redis_url, model_dir), log_dir, "--workers", "2", "--threads", "32").wait_ready()
    yield app
    app.stop()


@pytest.fixture
def api(webapp, worker):
    """An HTTP session against the running webapp, with a worker serving minilm."""
    session = requests.Session()
    base = webapp.url

    class Api:
        url = base

        def get(self, path, **kw):
            return session.get(base + path, timeout=kw.pop("timeout", 60), **kw)

        def post(self, path, **kw):
            return session.post(base + path, timeout=kw.pop("timeout", 60), **kw)

        def delete(self, path, **kw):
            return session.delete(base + path, timeout=kw.pop("timeout", 60), **kw)

    yield Api()
    session.close()


@pytest.fixture
def rdb(redis_url):
    return redis.Redis.from_url(redis_url)


def batch_stats(client: redis.Redis, model_id: str) -> dict:
    """The worker's batch counters for a model (see tasks.reporting)."""
    return {k.decode(): float(v) for k, v in client.hgetall(batch_stats_key(model_id)).items()}


def long_texts(count: int, words: int = 100) -> list[str]:
    """`count` different passages of real English, `words` words each.

    Load for the worker must be distinct texts: identical inputs in flight
    share one forward pass, so a list of copies is one item of work.
    """
    from pydoc_data.topics import topics

    pool = " ".join(topics.values()).split()
    return [" ".join(pool[i * words:(i + 1) * words]) for i in range(count)]


def wait_for_status(api, job_id: str, statuses: set, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = api.get(f"/jobs/{job_id}").json()
        if body.get("status") in statuses:
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {statuses}; last: {body}")
