"""What every runner shares: the encoding of an item, JSON-safe outputs, memory size."""

from __future__ import annotations

import os
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@dataclass
class Encoding:
    """One item ready for the model: its length in tokens, and token ids or the item itself."""

    length: int
    ids: list | None = None
    value: object = None


class Runner:
    """A loaded model that turns input items into outputs, a batch at a time.

    `encode(items, params)` checks and measures items (consumer thread);
    `run(encodings, params)` is one batch on the device (device thread);
    `dummy_encoding(length)` makes an item of about `length` tokens for
    calibration, run with `calibration_params`.
    """

    task = ""
    max_length = 512
    calibration_params: dict = {}
    model = None

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
