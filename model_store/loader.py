"""Loading models and running batches: the only module that imports transformers.

A runner turns input items into model-ready encodings (`encode`, which also
tells the batcher each item's token length) and a list of encodings into
JSON-safe outputs (`run`, one forward pass). The batcher decides which
encodings go through the model together.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from common.errors import InputTooLong, ValidationFailed
from model_store.store import ModelInfo

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

log = logging.getLogger(__name__)


@dataclass
class Encoding:
    """One item ready for the model: its token ids."""

    ids: list[int]

    @property
    def length(self) -> int:
        return len(self.ids)


class FeatureExtractionRunner:
    """Sentence embeddings: pooled last hidden state, optionally L2-normalized."""

    task = "feature-extraction"

    def __init__(self, info: ModelInfo, device: str):
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self._torch = torch
        self.device = torch.device(device)
        # trust_remote_code stays off: a model directory must not run code.
        self.tokenizer = AutoTokenizer.from_pretrained(info.path, local_files_only=True, trust_remote_code=False)
        self.model = AutoModel.from_pretrained(info.path, local_files_only=True, trust_remote_code=False)
        self.model.eval().to(self.device)
        limits = [
            info.max_seq_length,
            getattr(self.model.config, "max_position_embeddings", None),
            self.tokenizer.model_max_length if self.tokenizer.model_max_length < 10**6 else None,
        ]
        self.max_length = min(v for v in limits if v) if any(limits) else 512
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.calibration_params = {"pooling": "mean"}
        # An ordinary word piece, for timing batches of a given length.
        self._filler = self.tokenizer.convert_tokens_to_ids("the")
        if not isinstance(self._filler, int) or self._filler == self.tokenizer.unk_token_id:
            self._filler = max(self.pad_id + 1, 1000 % self.tokenizer.vocab_size)
        self._cls = self.tokenizer.cls_token_id
        self._sep = self.tokenizer.sep_token_id

    def memory_bytes(self) -> int:
        """Bytes held by the model's weights and buffers."""
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)

    def dummy_encoding(self, length: int) -> Encoding:
        """An encoding of exactly `length` tokens (special tokens included)."""
        ends = [t for t in (self._cls, self._sep) if t is not None]
        return Encoding((ends[:1] + [self._filler] * max(0, length - len(ends)) + ends[1:])[:length])

    def encode(self, items: list, params: dict) -> list[Encoding]:
        """Token ids per item; InputTooLong when one exceeds the limit and truncate is off."""
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise ValidationFailed(f"inputs[{i}] must be a string for {self.task}")
        truncate = params.get("truncate", True)
        ids = self.tokenizer(
            items,
            add_special_tokens=True,
            truncation=truncate,
            max_length=self.max_length if truncate else None,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        if not truncate:
            for i, seq in enumerate(ids):
                if len(seq) > self.max_length:
                    raise InputTooLong(
                        f"inputs[{i}] has {len(seq)} tokens; the model takes at most {self.max_length} "
                        "(set parameters.truncate to true to cut it)"
                    )
        return [Encoding(seq) for seq in ids]

    def run(self, encodings: list[Encoding], params: dict) -> list:
        """One forward pass over the batch; one output per encoding, in order."""
        torch = self._torch
        longest = max(e.length for e in encodings)
        pad = [self.pad_id] * longest
        ids = torch.tensor([e.ids + pad[: longest - e.length] for e in encodings], dtype=torch.long)
        lengths = torch.tensor([e.length for e in encodings])
        mask = (torch.arange(longest)[None, :] < lengths[:, None]).long()
        with torch.inference_mode():
            hidden = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
            pooling = params.get("pooling", "mean")
            if pooling == "none":
                if params.get("normalize"):
                    hidden = torch.nn.functional.normalize(hidden, p=2, dim=-1)
                hidden = hidden.float().cpu()
                return [hidden[row, : enc.length].tolist() for row, enc in enumerate(encodings)]
            pooled = pool(torch, hidden, mask.to(self.device), pooling)
            if params.get("normalize"):
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
            return pooled.float().cpu().tolist()


def pool(torch, hidden, mask, mode: str):
    """Reduce token vectors [B, T, H] to one vector per row [B, H]."""
    if mode == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(weights == 0, float("-inf")).max(dim=1).values
    if mode == "lasttoken":
        last = mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


RUNNERS = {FeatureExtractionRunner.task: FeatureExtractionRunner}


def load_runner(info: ModelInfo, device: str, task: str | None = None):
    """Load the model behind `info` onto `device` for `task` (default: its config's)."""
    task = task or info.task
    runner_cls = RUNNERS.get(task or "")
    if runner_cls is None:
        raise ValidationFailed(f"model {info.model_id!r} has task {task!r}, which this worker does not serve")
    log.info("loading %s (%s) on %s", info.model_id, task, device)
    return runner_cls(info, device)
