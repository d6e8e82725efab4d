"""The one typed settings object, read from the environment.

Both the webapp and the workers import this module, so it imports neither
Flask nor torch. Every field has one environment variable; a bad value stops
the process at start with a message naming the variable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping

from common.connections import check_url, redacted
from common.errors import SettingsError

DEFAULT_REDIS_URL = "redis://localhost:6379/0"

# Caps on one forward pass. Within them the worker picks the batch that its
# measured cost model (tasks/costmodel.py) says runs the most items per
# second: on a CPU a big padded batch can be slower per text than a small
# one. Lower them to bound latency or memory, not to tune throughput.
DEFAULT_MAX_BATCH_SIZE = 64

# Padded tokens per forward pass (items x longest sequence): bounds the
# activation memory of one batch whatever the mix of lengths.
DEFAULT_MAX_BATCH_TOKENS = 16384

# Extra time a batch may wait for more items once the model is idle.
# 0 = run as soon as the model is free; arrivals still accumulate while a
# batch runs, which is where most batching comes from.
DEFAULT_MAX_WAIT_MS = 0.0

# Unacknowledged jobs one worker may hold (running + waiting to be batched).
# Must exceed MAX_BATCH_SIZE, or prefetch silently caps the batch; small
# enough that one worker cannot hoard a queue other workers could drain.
DEFAULT_WORKER_PREFETCH = 128

DEFAULT_CACHE_TTL = 3600  # 0 turns the response cache off
# Level 1 of the response cache, in each webapp process: bounded by entries
# and by bytes (an embedding is a few KB of JSON).
DEFAULT_CACHE_L1_ITEMS = 10_000
DEFAULT_CACHE_L1_BYTES = 64 * 1024 * 1024
DEFAULT_RESULT_TTL = 3600
# What a result (and its job record) lives once POST /predict has answered
# it with 200: the client has it, so keeping it RESULT_TTL only costs Redis
# memory (a job's keys are most of it at a high request rate). Long enough
# for a client that lost the answer to GET /jobs/<id> it; a /predict that
# answered 202 keeps RESULT_TTL, since its client polls.
DEFAULT_DELIVERED_RESULT_TTL = 300

# Waiting jobs per model queue before POSTs are refused with 429.
DEFAULT_MAX_QUEUE_DEPTH = 10_000

DEFAULT_MAX_INPUT_CHARS = 20_000
DEFAULT_MAX_ITEMS_PER_REQUEST = 256
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024

# The longest a client may take to send a request body once its headers
# are in (408 past it). Each gunicorn thread reading a body is held for as
# long as the client trickles it; without a bound, ~130 clients that send
# less than their Content-Length stall the default webapp. 10 s is ~3 Mbit/s
# for a body of MAX_BODY_BYTES: slower clients belong behind a buffering
# proxy (see the README), which also takes the slow reads off gunicorn.
DEFAULT_BODY_TIMEOUT_S = 10.0

# The most tokens a generation request may ask for: bounds the time one
# job holds the model.
DEFAULT_MAX_NEW_TOKENS = 256

# The most generation one request may ask for, counted in generated tokens
# over every item, beam and returned sequence: items x max_new_tokens x
# num_beams x num_return_sequences. Each factor has a cap of its own, but
# their product had none: 256 items x 256 tokens x 8 beams x 8 sequences,
# every one within its cap, held a 2-core CPU worker for 82 s (tiny-bart),
# and every other model on it waited. No batch generates more than this
# either, so between two batches of one model another model gets its turn
# within about the time of the worst accepted request. The default keeps
# that to a few seconds for the demo models on the 2-core build machine:
# the worst shape (tiny-gpt2, 256 items x 128 tokens) took 3.7 CPU-seconds
# on one core (`python -m bench.budget`); lower it for large models, raise
# it on a GPU.
DEFAULT_MAX_GENERATION_TOKENS_PER_REQUEST = 32_768

# The same for the other tasks whose work is a product of bounded factors
# (common/budget.py), sized the same way (worst accepted request, inputs
# as long as the model takes, one core). Zero-shot classification runs one
# forward pass per item and candidate label: 256 items x 64 labels were
# 16384 passes; 1024 (16 items x 64 labels) took 3.2 CPU-seconds.
# Fill-mask returns top_k predictions per mask token, each with its whole
# input decoded again: 256 items of ~500 masks x top_k 100 would have been
# millions of predictions, gigabytes of JSON; 2048 took 2.0 CPU-seconds.
DEFAULT_MAX_ZERO_SHOT_PAIRS_PER_REQUEST = 1024
DEFAULT_MAX_FILL_MASK_PREDICTIONS_PER_REQUEST = 2048
# Token vectors (pooling "none") one request may get back: each is a row of
# the model's hidden size (384 numbers for minilm, ~4.5 KB of JSON). Without
# it, 256 items of 256 tokens made one result of ~290 MB for Redis and the
# webapp to hold; 4096 are 18 MB (1.3 CPU-seconds with minilm).
DEFAULT_MAX_TOKEN_VECTORS_PER_REQUEST = 4096

# Seconds a webapp process keeps accepting requests after its SIGTERM,
# answering /health/ready with 503 "draining" meanwhile, before it stops
# accepting and finishes what it holds. A load balancer or Kubernetes needs
# a probe or two to take the process out of rotation; requests it sends
# meanwhile are served instead of refused. 0 stops accepting at once.
DEFAULT_DRAIN_DELAY_S = 0.0

# How long /predict waits by default, and the most a client may ask for.
DEFAULT_WAIT_S = 30.0
MAX_WAIT_S = 300.0

# The longest options.timeout a client may set (a day).
MAX_TIMEOUT_S = 86_400.0

# An unacknowledged message goes back to its queue after this long (Redis
# broker). Longer than any job may take, or jobs run twice.
DEFAULT_VISIBILITY_TIMEOUT = 3600

# A job whose worker died each of this many times it ran the job fails with
# `worker_lost` instead of taking down a worker again (a poison job). A job
# that was running when its worker died runs alone afterwards, so one
# poison job does not use up the deliveries of the jobs batched with it.
DEFAULT_MAX_DELIVERIES = 3

# Models one worker keeps loaded; loading one more unloads the least
# recently used. Bounded by the device's memory, not by the batcher.
DEFAULT_MAX_MODELS_PER_WORKER = 4

# Workers refresh their entry in the registry this often; an entry older
# than three intervals counts as a dead worker.
DEFAULT_HEARTBEAT_S = 2.0

# A rate limit as limits (Flask-Limiter) reads it: "100/minute", "10 per second",
# several joined by ";" (each must hold). Checked here so a typo stops the start.
_RATE_RE = re.compile(r"\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day|month|year)s?", re.IGNORECASE)
# What a bearer token may hold: visible ASCII, no comma (the list separator).
_TOKEN_RE = re.compile(r"[!-+\--~]+")

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# text: one readable line per record, for a person at a terminal; json: one JSON
# object per line, for a log pipeline (common/logcontext.py).
LOG_FORMATS = ("text", "json")
_DEVICE_RE = re.compile(r"auto|cpu|cuda|cuda:\d+")  # use fullmatch
MODEL_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # use fullmatch
MODEL_ID_PATTERN = f"^{MODEL_ID_RE.pattern}$"  # the same, anchored: for JSON Schema and messages


@dataclass(frozen=True)
class Settings:
    """Every knob of the service; see the README's settings table."""

    redis_url: str = DEFAULT_REDIS_URL
    broker_url: str = ""  # "" = redis_url
    result_backend: str = ""  # "" = redis_url
    model_dir: Path = Path("models")
    preload_models: tuple[str, ...] = ()
    worker_device: str = "auto"
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    worker_prefetch: int = DEFAULT_WORKER_PREFETCH
    cache_ttl: int = DEFAULT_CACHE_TTL
    result_ttl: int = DEFAULT_RESULT_TTL
    delivered_result_ttl: int = DEFAULT_DELIVERED_RESULT_TTL
    max_queue_depth: int = DEFAULT_MAX_QUEUE_DEPTH
    max_input_chars: int = DEFAULT_MAX_INPUT_CHARS
    max_items_per_request: int = DEFAULT_MAX_ITEMS_PER_REQUEST
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    max_generation_tokens_per_request: int = DEFAULT_MAX_GENERATION_TOKENS_PER_REQUEST
    max_zero_shot_pairs_per_request: int = DEFAULT_MAX_ZERO_SHOT_PAIRS_PER_REQUEST
    max_fill_mask_predictions_per_request: int = DEFAULT_MAX_FILL_MASK_PREDICTIONS_PER_REQUEST
    max_token_vectors_per_request: int = DEFAULT_MAX_TOKEN_VECTORS_PER_REQUEST
    cache_l1_items: int = DEFAULT_CACHE_L1_ITEMS
    cache_l1_bytes: int = DEFAULT_CACHE_L1_BYTES
    autoload: bool = True
    max_models_per_worker: int = DEFAULT_MAX_MODELS_PER_WORKER
    # Secrets: kept out of repr, so a logged or printed Settings never shows them.
    api_tokens: tuple[str, ...] = field(default=(), repr=False)
    admin_token: str = field(default="", repr=False)
    rate_limit: str = ""  # "" = no rate limit
    drain_delay_s: float = DEFAULT_DRAIN_DELAY_S
    log_level: str = "INFO"
    log_format: str = "text"

    def __post_init__(self):
        if not self.broker_url:
            object.__setattr__(self, "broker_url", self.redis_url)
        if not self.result_backend:
            object.__setattr__(self, "result_backend", self.redis_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from `environ` (default os.environ); raise SettingsError."""
        env = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            name = f.name.upper()
            raw = env.get(name)
            if raw is None or not raw.strip():
                continue
            values[f.name] = _PARSERS[f.name](name, raw.strip())
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Raise SettingsError when fields disagree with each other."""
        # URLs appear in messages redacted: they may hold a password.
        for name in ("redis_url", "broker_url", "result_backend"):
            url = getattr(self, name)
            if not re.match(r"^(redis|rediss|amqp|amqps|pyamqp|unix)://", url):
                raise SettingsError(f"{name.upper()} must be a redis:// or amqp:// URL, got {redacted(url)!r}")
            if re.match(r"^(redis|rediss|unix)://", url):
                check_url(name.upper(), url)
        if not re.match(r"^(redis|rediss|unix)://", self.redis_url):
            raise SettingsError(f"REDIS_URL must be a redis:// URL, got {redacted(self.redis_url)!r}")
        if not re.match(r"^(redis|rediss|unix)://", self.result_backend):
            raise SettingsError(
                f"RESULT_BACKEND must be a redis:// URL (results are stored in Redis), "
                f"got {redacted(self.result_backend)!r}"
            )
        if self.worker_prefetch < self.max_batch_size:
            raise SettingsError(
                f"WORKER_PREFETCH ({self.worker_prefetch}) must be at least MAX_BATCH_SIZE "
                f"({self.max_batch_size}), or prefetch would cap every batch"
            )

    def redis_urls(self) -> dict[str, str]:
        """Variable name -> URL, of every Redis this service talks to (the broker's if it is one)."""
        urls = {"REDIS_URL": self.redis_url, "RESULT_BACKEND": self.result_backend}
        if re.match(r"^(redis|rediss|unix)://", self.broker_url):
            urls["BROKER_URL"] = self.broker_url
        return urls


def _number(cast, noun: str, minimum, maximum=None):
    """A parser for an int or float variable within [minimum, maximum]."""

    def parse(name: str, raw: str):
        try:
            value = cast(raw)
        except ValueError:
            raise SettingsError(f"{name} must be {noun}, got {raw!r}") from None
        if not value >= minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise SettingsError(f"{name} must be {bounds}, got {raw}")
        return value

    return parse


def _int(minimum: int, maximum: int | None = None):
    return _number(int, "an integer", minimum, maximum)


def _float(minimum: float, maximum: float | None = None):
    return _number(float, "a number", minimum, maximum)


def _str(name: str, raw: str) -> str:
    return raw


def _bool(name: str, raw: str) -> bool:
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _path(name: str, raw: str) -> Path:
    return Path(raw).expanduser()


def _model_list(name: str, raw: str) -> tuple[str, ...]:
    ids = tuple(part.strip() for part in raw.split(",") if part.strip())
    for model_id in ids:
        if not MODEL_ID_RE.fullmatch(model_id):
            raise SettingsError(f"{name} holds an invalid model id {model_id!r}")
    return ids


def _tokens(name: str, raw: str) -> tuple[str, ...]:
    tokens = tuple(part.strip() for part in raw.split(",") if part.strip())
    for i, token in enumerate(tokens):
        if not _TOKEN_RE.fullmatch(token):  # the message never shows a token
            raise SettingsError(f"{name}: token #{i + 1} holds a character other than visible ASCII")
    return tokens


def _token(name: str, raw: str) -> str:
    if not _TOKEN_RE.fullmatch(raw):
        raise SettingsError(f"{name} must be visible ASCII characters, with no comma or space")
    return raw


def _rate_limit(name: str, raw: str) -> str:
    parts = [part.strip() for part in raw.split(";")]
    if not all(_RATE_RE.fullmatch(part) for part in parts):
        raise SettingsError(f"{name} must be like 100/minute or 10 per second (several joined by ;), got {raw!r}")
    return "; ".join(parts)


def _device(name: str, raw: str) -> str:
    value = raw.lower()
    if not _DEVICE_RE.fullmatch(value):
        raise SettingsError(f"{name} must be auto, cpu, cuda or cuda:N, got {raw!r}")
    return value


def _log_level(name: str, raw: str) -> str:
    value = raw.upper()
    if value not in _LOG_LEVELS:
        raise SettingsError(f"{name} must be one of {', '.join(_LOG_LEVELS)}, got {raw!r}")
    return value


def _log_format(name: str, raw: str) -> str:
    value = raw.lower()
    if value not in LOG_FORMATS:
        raise SettingsError(f"{name} must be one of {', '.join(LOG_FORMATS)}, got {raw!r}")
    return value


_PARSERS = {
    "redis_url": _str,
    "broker_url": _str,
    "result_backend": _str,
    "model_dir": _path,
    "preload_models": _model_list,
    "worker_device": _device,
    "max_batch_size": _int(1, 4096),
    "max_batch_tokens": _int(1),
    "max_wait_ms": _float(0.0, 10_000.0),
    "worker_prefetch": _int(1, 100_000),
    "cache_ttl": _int(0),
    "result_ttl": _int(1),
    "delivered_result_ttl": _int(1),
    "max_queue_depth": _int(1),
    "max_input_chars": _int(1),
    "max_items_per_request": _int(1, 100_000),
    "max_body_bytes": _int(1024),
    "body_timeout_s": _float(0.1, 3600.0),
    "visibility_timeout": _int(1),
    "heartbeat_s": _float(0.1, 60.0),
    "max_deliveries": _int(1, 1000),
    "max_new_tokens": _int(1, 100_000),
    "max_generation_tokens_per_request": _int(1),
    "max_zero_shot_pairs_per_request": _int(1),
    "max_fill_mask_predictions_per_request": _int(1),
    "max_token_vectors_per_request": _int(1),
    "cache_l1_items": _int(1),
    "cache_l1_bytes": _int(1024),
    "autoload": _bool,
    "max_models_per_worker": _int(1, 1000),
    "api_tokens": _tokens,
    "admin_token": _token,
    "rate_limit": _rate_limit,
    "drain_delay_s": _float(0.0, 3600.0),
    "log_level": _log_level,
    "log_format": _log_format,
}

_settings: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings
