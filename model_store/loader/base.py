"""What every runner shares: the encoding of an item, JSON-safe outputs, memory size."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@dataclass
class Encoding:
    """One item ready for the model: its length in tokens, and what `run` reads of it.

    A runner that runs from token ids (feature-extraction) tokenizes once,
    in `encode`, and keeps `ids`. The others hand the item itself to a
    tokenizer that runs again in `run` (a pipeline, `generate`, question
    answering's offsets): for them `encode` only checks and measures the
    item, and keeps it as `raw_item`.
    """

    length: int
    ids: list | None = None  # token ids, special tokens included
    raw_item: object = None  # the input item as sent (a string, or a question-answering dict)


class Runner(ABC):
    """A loaded model that turns input items into outputs, a batch at a time.

    `calibration_params` are the parameters calibration runs batches with
    (tasks/calibration.py); `max_length` is the longest input in tokens;
    `device` the torch device it runs on (None: none of torch's).
    """

    task = ""
    max_length = 512
    calibration_params: dict = {}
    model = None
    device = None

    @abstractmethod
    def encode(self, items: list, params: dict) -> list[Encoding]:
        """Check and measure `items` for the model (consumer thread); ServiceError on a bad one."""

    @abstractmethod
    def run(self, encodings: list[Encoding], params: dict) -> list:
        """One batch through the model on the device (device thread): one output per encoding, in order."""

    @abstractmethod
    def dummy_encoding(self, length: int) -> Encoding:
        """An item of about `length` tokens, for calibration."""

    def load_pretrained(self, auto_class, info, device: str, *limits) -> None:
        """Tokenizer and model from the local directory, in eval mode on `device`.

        `max_length` is the least of the model's and tokenizer's limits and
        any given `limits`. trust_remote_code stays off: a model directory
        must not run code.
        """
        import torch
        from transformers import AutoTokenizer

        self._torch = torch
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(info.path, local_files_only=True, trust_remote_code=False)
        self.model = auto_class.from_pretrained(info.path, local_files_only=True, trust_remote_code=False)
        self.model.eval().to(self.device)
        self.max_length = model_max_length(self.tokenizer, self.model.config, *limits)

    def memory_bytes(self) -> int:
        """Bytes held by the model's weights and buffers."""
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)


def jsonable(value):
    """Pipeline outputs made JSON-safe: numpy and torch scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return jsonable(value.tolist())
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def model_max_length(tokenizer, config, *extra) -> int:
    """The longest input in tokens: the least of the config's, the tokenizer's and `extra` limits."""
    limits = [getattr(config, "max_position_embeddings", None), getattr(config, "n_positions", None),
              tokenizer.model_max_length if tokenizer.model_max_length < 10**6 else None, *extra]
    limits = [v for v in limits if v]
    return min(limits) if limits else 512
