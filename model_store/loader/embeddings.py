"""feature-extraction: pooled sentence embeddings, or token vectors.

Our own forward rather than the pipeline: items arrive tokenized (the
consumer thread did it), batches are padded here, and pooling follows the
model's sentence-transformers configuration.
"""

from __future__ import annotations

from common.errors import InputTooLong, ValidationFailed
from model_store.loader.base import Encoding, Runner
from model_store.store import ModelInfo


class FeatureExtractionRunner(Runner):
    """Sentence embeddings: pooled last hidden state, optionally L2-normalized."""

    task = "feature-extraction"

    def __init__(self, info: ModelInfo, device: str, task: str | None = None):
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.load_pretrained(AutoModel, info, device, info.max_seq_length)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.calibration_params = {"pooling": "mean"}
        # An ordinary word piece, for timing batches of a given length.
        self._filler = self.tokenizer.convert_tokens_to_ids("the")
        if not isinstance(self._filler, int) or self._filler == self.tokenizer.unk_token_id:
            self._filler = max(self.pad_id + 1, 1000 % self.tokenizer.vocab_size)
        self._cls = self.tokenizer.cls_token_id
        self._sep = self.tokenizer.sep_token_id
        self._direct = direct_tokenizer(self.tokenizer, self.max_length)

    def dummy_encoding(self, length: int) -> Encoding:
        """An encoding of exactly `length` tokens (special tokens included)."""
        ends = [t for t in (self._cls, self._sep) if t is not None]
        ids = (ends[:1] + [self._filler] * max(0, length - len(ends)) + ends[1:])[:length]
        return Encoding(length=len(ids), ids=ids)

    def encode(self, items: list, params: dict) -> list[Encoding]:
        """Token ids per item; InputTooLong when one exceeds the limit and truncate is off."""
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise ValidationFailed(f"inputs[{i}] must be a string for {self.task}")
        truncate = params.get("truncate", True)
        if truncate and self._direct is not None:
            return [Encoding(length=len(enc.ids), ids=enc.ids) for enc in self._direct.encode_batch(items)]
        ids = transformers_ids(self.tokenizer, items, self.max_length if truncate else None)
        if not truncate:
            for i, seq in enumerate(ids):
                if len(seq) > self.max_length:
                    raise InputTooLong(
                        f"inputs[{i}] has {len(seq)} tokens; the model takes at most {self.max_length} "
                        "(set parameters.truncate to true to cut it)"
                    )
        return [Encoding(length=len(seq), ids=seq) for seq in ids]

    def run(self, encodings: list[Encoding], params: dict) -> list:
        """One forward pass over the batch; one output per encoding, in order.

        Each output is a float32 numpy array (the pooled vector, or the
        token-vector matrix for pooling "none"), not a list of Python
        floats: serialized with orjson.OPT_SERIALIZE_NUMPY it is written in
        float32's shortest form (~10 characters a value instead of ~19 for
        a float64 repr) and reads back to the identical float32 values.
        """
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
                # C-contiguous (orjson serializes only those); each row a view of it
                hidden = hidden.float().cpu().contiguous().numpy()
                return [hidden[row, : enc.length] for row, enc in enumerate(encodings)]
            pooled = pool(torch, hidden, mask.to(self.device), pooling)
            if params.get("normalize"):
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
            return list(pooled.float().cpu().contiguous().numpy())


def transformers_ids(tokenizer, items: list, max_length: int | None) -> list:
    """Token ids per item by transformers' own call, special tokens added; truncated at `max_length` unless None."""
    return tokenizer(
        items,
        add_special_tokens=True,
        truncation=max_length is not None,
        max_length=max_length,
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]


# Texts the direct tokenizer must encode exactly as transformers does before it is used.
PROBES = (
    "",
    "The quick brown fox jumps over the lazy dog.",
    "  Spaces,\ttabs\nand newlines; UPPER case, accents: café, naïve, Ångström. Emoji 🙂 and 中文 and ١٢٣.",
    "[CLS] [SEP] [MASK] [PAD] <s> </s> <pad> written as text",
    "word " * 600,  # longer than any model's limit: truncated
)


def direct_tokenizer(tokenizer, max_length: int):
    """A private copy of the fast tokenizer's Rust backend, set to add special tokens and truncate at `max_length`.

    transformers' `tokenizer(...)` costs about 20 µs of Python per call on
    top of the Rust encoding (about 80 µs against 60 µs a sentence for
    minilm), reconfiguring the backend's truncation and padding each time; the
    consumer thread makes one call per job, holding the GIL the device
    thread needs between operators. The copy is configured once. It is
    used only if it encodes PROBES exactly as transformers does (else None:
    transformers' call is kept); a copy, so that transformers' own calls
    (calibration, other threads) never see its settings.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not getattr(tokenizer, "is_fast", False):
        return None
    try:
        direct = type(backend).from_str(backend.to_str())
        direct.no_padding()
        direct.enable_truncation(max_length, stride=0, strategy="longest_first",
                                 direction=getattr(tokenizer, "truncation_side", "right"))
        expected = transformers_ids(tokenizer, list(PROBES), max_length)
        if [enc.ids for enc in direct.encode_batch(list(PROBES))] != [list(ids) for ids in expected]:
            return None
    except Exception:  # noqa: BLE001 - any doubt: transformers' own call
        return None
    return direct


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
