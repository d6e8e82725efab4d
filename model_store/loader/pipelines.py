"""Tasks served through transformers' own pipelines, a batch per call.

text-classification, token-classification, fill-mask,
zero-shot-classification, text-generation: the outputs are exactly the
pipeline's, per input, made JSON-safe.
"""

from __future__ import annotations

from common.errors import InputTooLong, ValidationFailed
from model_store.loader.base import Encoding, Runner, jsonable, model_max_length
from model_store.store import ModelInfo

PIPELINE_TASKS = ("text-classification", "token-classification", "fill-mask", "zero-shot-classification",
                  "text-generation")
# Tasks whose input is cut to the model's length rather than refused.
TRUNCATING = ("text-classification", "zero-shot-classification")
# ...of which the pipeline takes `truncation` as an argument (zero-shot truncates by itself).
TRUNCATION_ARG = ("text-classification",)


class PipelineRunner(Runner):
    """A transformers pipeline, called with one batch of items at a time."""

    def __init__(self, info: ModelInfo, device: str, task: str):
        from transformers import AutoTokenizer, pipeline

        self.task = task
        tokenizer = AutoTokenizer.from_pretrained(info.path, local_files_only=True, trust_remote_code=False)
        if task == "text-generation":
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            tokenizer.padding_side = "left"  # decoder-only models continue from the right
        # trust_remote_code stays off: a model directory must not run code.
        self.pipe = pipeline(task=task, model=str(info.path), tokenizer=tokenizer, device=device,
                             trust_remote_code=False)
        self.model = self.pipe.model
        self.device = self.pipe.device
        self.tokenizer = tokenizer
        self.max_length = model_max_length(tokenizer, self.model.config)
        self.mask_token = tokenizer.mask_token
        if task == "zero-shot-classification":
            self.calibration_params = {"candidate_labels": ["positive", "negative"]}
        elif task == "text-generation":
            self.calibration_params = {"max_new_tokens": 8, "do_sample": False}
        else:
            self.calibration_params = {}

    def dummy_encoding(self, length: int) -> Encoding:
        words = ["the"] * max(1, length - 2)
        if self.task == "fill-mask":
            words[-1] = self.mask_token
        text = " ".join(words)
        return Encoding(length=self._length(text), raw_item=text)

    def _length(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def encode(self, items: list, params: dict) -> list[Encoding]:
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise ValidationFailed(f"inputs[{i}] must be a string for {self.task}")
            if self.task == "fill-mask" and self.mask_token not in item:
                raise ValidationFailed(f"inputs[{i}] has no {self.mask_token} for the model to fill")
            length = self._length(item)
            room = self.max_length
            if self.task == "text-generation":
                room -= params.get("max_new_tokens", 0)
            if length > room and self.task not in TRUNCATING:
                raise InputTooLong(f"inputs[{i}] has {length} tokens; this model takes at most {room}"
                                   + (" with max_new_tokens" if self.task == "text-generation" else ""))
            out.append(Encoding(length=min(length, self.max_length), raw_item=item))
        return out

    def run(self, encodings: list[Encoding], params: dict) -> list:
        kwargs = dict(params)
        if self.task in TRUNCATION_ARG:
            kwargs["truncation"] = True
        if self.task == "text-generation":
            kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        outputs = self.pipe([e.raw_item for e in encodings], batch_size=len(encodings), **kwargs)
        if self.task == "fill-mask" and len(encodings) == 1:
            outputs = [outputs]  # fill-mask unwraps a one-item list; the others do not
        return jsonable(outputs)
