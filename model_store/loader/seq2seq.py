"""text2text-generation, summarization, translation: encoder-decoder generation.

transformers 5 removed these pipelines; this runner generates for a batch
of inputs and answers, per input, what they answered: a list of
`num_return_sequences` dicts keyed `generated_text`, `summary_text` or
`translation_text`.
"""

from __future__ import annotations

from common.errors import InputTooLong, ValidationFailed
from model_store.loader.base import Encoding, Runner
from model_store.store import ModelInfo

SEQ2SEQ_TASKS = {"text2text-generation": "generated_text", "summarization": "summary_text",
                 "translation": "translation_text"}
GENERATE_ARGS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "num_beams",
                 "repetition_penalty", "num_return_sequences")


class Seq2SeqRunner(Runner):
    calibration_params = {"max_new_tokens": 8, "do_sample": False}

    def __init__(self, info: ModelInfo, device: str, task: str):
        from transformers import AutoModelForSeq2SeqLM

        self.task = task
        self.key = SEQ2SEQ_TASKS[task]
        self.load_pretrained(AutoModelForSeq2SeqLM, info, device)

    def dummy_encoding(self, length: int) -> Encoding:
        return Encoding(length=length, raw_item=" ".join(["the"] * max(1, length - 2)))

    def encode(self, items: list, params: dict) -> list[Encoding]:
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise ValidationFailed(f"inputs[{i}] must be a string for {self.task}")
            length = len(self.tokenizer(item)["input_ids"])
            if length > self.max_length:
                raise InputTooLong(f"inputs[{i}] has {length} tokens; this model takes at most {self.max_length}")
            out.append(Encoding(length=length, raw_item=item))
        return out

    def run(self, encodings: list[Encoding], params: dict) -> list:
        torch = self._torch
        enc = self.tokenizer([e.raw_item for e in encodings], padding=True, return_tensors="pt")
        kwargs = {k: params[k] for k in GENERATE_ARGS if k in params}
        per_input = kwargs.get("num_return_sequences", 1)
        with torch.inference_mode():
            generated = self.model.generate(**{k: v.to(self.device) for k, v in enc.items()}, **kwargs)
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=True)
        return [[{self.key: text.strip()} for text in texts[i * per_input:(i + 1) * per_input]]
                for i in range(len(encodings))]
