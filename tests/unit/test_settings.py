"""Settings: typed values from the environment; bad values name their variable."""

import dataclasses
from pathlib import Path

import pytest

from common.errors import SettingsError
from common.settings import DEFAULT_MAX_BATCH_SIZE, Settings


def test_defaults_follow_redis_url():
    """BROKER_URL and RESULT_BACKEND default to REDIS_URL."""
    s = Settings.from_env({"REDIS_URL": "redis://example:6380/2"})
    assert s.broker_url == "redis://example:6380/2"
    assert s.result_backend == "redis://example:6380/2"
    assert s.max_batch_size == DEFAULT_MAX_BATCH_SIZE


def test_values_are_parsed_to_their_types():
    """Every variable becomes a typed field."""
    s = Settings.from_env({
        "MODEL_DIR": "/tmp/m", "PRELOAD_MODELS": "minilm, other", "WORKER_DEVICE": "CUDA:1",
        "MAX_BATCH_SIZE": "8", "MAX_WAIT_MS": "2.5", "LOG_LEVEL": "debug", "LOG_FORMAT": "JSON",
        "BROKER_URL": "amqp://guest:guest@localhost:5672//", "ADMIN_TOKEN": "s3cret",
    })
    assert s.model_dir == Path("/tmp/m")
    assert s.preload_models == ("minilm", "other")
    assert s.worker_device == "cuda:1"
    assert (s.max_batch_size, s.max_wait_ms, s.log_level, s.log_format) == (8, 2.5, "DEBUG", "json")
    assert s.broker_url.startswith("amqp://")
    assert s.admin_token == "s3cret"


@pytest.mark.parametrize("name, value", [
    ("MAX_BATCH_SIZE", "abc"),
    ("MAX_BATCH_SIZE", "0"),
    ("MAX_WAIT_MS", "-1"),
    ("WORKER_DEVICE", "gpu"),
    ("PRELOAD_MODELS", "../etc"),
    ("LOG_LEVEL", "LOUD"),
    ("LOG_FORMAT", "xml"),
    ("REDIS_URL", "http://localhost"),
    ("RESULT_BACKEND", "amqp://localhost"),
    ("RESULT_TTL", "0"),
    ("DELIVERED_RESULT_TTL", "0"),
])
def test_bad_value_names_the_variable(name, value):
    """A bad value raises SettingsError whose message names the variable."""
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_prefetch_may_not_cap_the_batch():
    """WORKER_PREFETCH below MAX_BATCH_SIZE would silently cap every batch."""
    with pytest.raises(SettingsError, match="WORKER_PREFETCH"):
        Settings.from_env({"MAX_BATCH_SIZE": "64", "WORKER_PREFETCH": "16"})


def test_settings_are_frozen():
    """The settings object cannot be changed after start."""
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.max_batch_size = 3
