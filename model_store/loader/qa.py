"""question-answering: extractive answers, in the shape the pipeline gave them.

transformers 5 removed the question-answering pipeline; this runner does
what it did for one window per question: score every span of the
context by start x end probability, keep spans of at most
`max_answer_len` tokens, and answer `{score, start, end, answer}`
(character offsets into the context), or a list of `top_k` of them.
A context longer than the model takes is cut to fit.
"""

from __future__ import annotations

from common.errors import ValidationFailed
from model_store.loader.base import Encoding, Runner
from model_store.store import ModelInfo


class QuestionAnsweringRunner(Runner):
    task = "question-answering"
    calibration_params = {"top_k": 1}

    def __init__(self, info: ModelInfo, device: str, task: str | None = None):
        from transformers import AutoModelForQuestionAnswering

        self.load_pretrained(AutoModelForQuestionAnswering, info, device)

    def dummy_encoding(self, length: int) -> Encoding:
        item = {"question": "what is it?", "context": " ".join(["the"] * max(1, length - 8))}
        return Encoding(length=length, raw_item=item)

    def encode(self, items: list, params: dict) -> list[Encoding]:
        out = []
        for i, item in enumerate(items):
            if not (isinstance(item, dict) and isinstance(item.get("question"), str)
                    and isinstance(item.get("context"), str)):
                raise ValidationFailed(f'inputs[{i}] must be {{"question": ..., "context": ...}}')
            ids = self.tokenizer(item["question"], item["context"], truncation="only_second",
                                 max_length=self.max_length)["input_ids"]
            out.append(Encoding(length=len(ids), raw_item=item))
        return out

    def run(self, encodings: list[Encoding], params: dict) -> list:
        torch = self._torch
        items = [e.raw_item for e in encodings]
        enc = self.tokenizer([it["question"] for it in items], [it["context"] for it in items],
                             truncation="only_second", max_length=self.max_length, padding=True,
                             return_offsets_mapping=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping").tolist()
        sequence_ids = [enc.sequence_ids(i) for i in range(len(items))]
        with torch.inference_mode():
            out = self.model(**{k: v.to(self.device) for k, v in enc.items()})
        start_logits = out.start_logits.float().cpu()
        end_logits = out.end_logits.float().cpu()
        top_k = params.get("top_k", 1)
        longest = params.get("max_answer_len", 15)
        impossible = params.get("handle_impossible_answer", False)
        results = []
        for i, item in enumerate(items):
            in_context = torch.tensor([s == 1 for s in sequence_ids[i]])
            start = torch.softmax(start_logits[i].masked_fill(~in_context, -1e4), dim=-1)
            end = torch.softmax(end_logits[i].masked_fill(~in_context, -1e4), dim=-1)
            scores = torch.triu(start[:, None] * end[None, :])  # end >= start
            scores = scores - torch.triu(scores, diagonal=longest)  # at most `longest` tokens
            flat = scores.flatten()
            best = torch.topk(flat, min(top_k, int(in_context.sum()) or 1)).indices.tolist()
            width = scores.shape[1]
            answers = []
            for index in best:
                s, e = divmod(index, width)
                begin, finish = offsets[i][s][0], offsets[i][e][1]
                answers.append({"score": float(flat[index]), "start": begin, "end": finish,
                                 "answer": item["context"][begin:finish]})
            if impossible:
                null = float(torch.softmax(start_logits[i], -1)[0] * torch.softmax(end_logits[i], -1)[0])
                answers.append({"score": null, "start": 0, "end": 0, "answer": ""})
                answers = sorted(answers, key=lambda a: -a["score"])[:top_k]
            results.append(answers[0] if top_k == 1 else answers)
        return results
