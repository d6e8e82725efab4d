"""The model directory: one sub-directory per model, named by its model id.

Reads only files (config.json, sentence-transformers metadata); never
imports torch or transformers, so the webapp can use it to validate
requests against the models that exist.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ModelNotFound, ValidationFailed
from common.params import GENERATION_TASKS
from common.settings import MODEL_ID_PATTERN, MODEL_ID_RE

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "spiece.model", "vocab.json", "tokenizer.model")

# Architecture suffix -> pipeline task, most specific first.
_TASK_BY_ARCH_SUFFIX = (
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMaskedLM", "fill-mask"),
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),
    ("ForConditionalGeneration", "text2text-generation"),
    ("Model", "feature-extraction"),
)

# sentence-transformers' 1_Pooling/config.json flags -> our pooling names.
_POOLING_KEYS = (
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_lasttoken", "lasttoken"),
)


@dataclass(frozen=True)
class ModelInfo:
    """What the store knows of one model directory, without loading it."""

    model_id: str
    path: Path
    task: str | None
    pooling: str = "mean"
    max_seq_length: int | None = None
    size_bytes: int = 0
    complete: bool = True
    problem: str = ""
    fingerprint: str = ""
    mask_token: str | None = None
    num_beams: int = 1  # beams the model's generation config asks for when a request does not
    extra: dict = field(default_factory=dict, compare=False)


class ModelStore:
    """The models under MODEL_DIR; resolves ids strictly inside it."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def path_for(self, model_id: str) -> Path:
        """The directory of `model_id`; raise on a bad or unknown id."""
        if not isinstance(model_id, str) or not MODEL_ID_RE.fullmatch(model_id):
            raise ValidationFailed(f"model_id must match {MODEL_ID_PATTERN}", field="model_id")
        # The id pattern admits no separator and no leading dot, so the entry
        # is always a direct child of the store; it may be a symlink (to a
        # Hugging Face cache snapshot, say), which is the user's choice.
        path = self.root / model_id
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"model {model_id!r} is not in the store")
        return path

    def exists(self, model_id: str) -> bool:
        try:
            self.path_for(model_id)
        except (ModelNotFound, ValidationFailed):
            return False
        return True

    def describe(self, model_id: str) -> ModelInfo:
        """Read a model's metadata; raise ModelNotFound if it is not there."""
        return describe_dir(model_id, self.path_for(model_id))

    def list(self) -> list[ModelInfo]:
        """Every entry of the store, complete or not, sorted by id."""
        if not self.root.is_dir():
            return []
        infos = []
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            if not MODEL_ID_RE.fullmatch(entry.name):
                infos.append(_broken(entry, "directory name is not a valid model id"))
                continue
            infos.append(describe_dir(entry.name, entry))
        return infos


def default_parameters(info: ModelInfo, task: str) -> dict:
    """Parameter defaults that come from the model rather than the task."""
    if task == "feature-extraction":
        return {"pooling": info.pooling}
    if task in GENERATION_TASKS and info.num_beams > 1:
        return {"num_beams": info.num_beams}  # what generate() uses anyway: counted in the request's budget
    return {}


def describe_dir(model_id: str, path: Path) -> ModelInfo:
    """Inspect one model directory; problems are reported, not raised."""
    config_path = path / "config.json"
    if not config_path.is_file():
        return _broken(path, "no config.json (not a save_pretrained folder)", model_id)
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        return _broken(path, f"config.json is unreadable: {exc}", model_id)
    if not isinstance(config, dict):
        return _broken(path, "config.json is not a JSON object", model_id)
    files = {p.name for p in path.iterdir()}
    problem = ""
    if not files.intersection(WEIGHT_FILES):
        problem = "no weights (model.safetensors or pytorch_model.bin)"
    elif not files.intersection(TOKENIZER_FILES):
        problem = "no tokenizer files"
    return ModelInfo(
        model_id=model_id,
        path=path,
        task=task_from_config(config),
        pooling=_pooling_mode(path),
        max_seq_length=_max_seq_length(path),
        size_bytes=_dir_size(path),
        complete=not problem,
        problem=problem,
        fingerprint=fingerprint(path),
        mask_token=_mask_token(path),
        num_beams=_declared_num_beams(path, config),
        extra={"architectures": config.get("architectures") or [], "model_type": config.get("model_type"),
               # a benchmark's stand-in (model_store/standin.py): seconds each batch lasts
               "stand_in_forward_s": config.get("atf_stand_in_forward_s")},
    )


def task_from_config(config: dict) -> str | None:
    """The pipeline task a config implies, from its architecture.

    A sequence classifier with an "entailment" label is an NLI model:
    zero-shot-classification. An encoder-decoder whose config carries
    parameters for exactly one of summarization or translation does that.
    """
    for arch in config.get("architectures") or ():
        for suffix, task in _TASK_BY_ARCH_SUFFIX:
            if arch.endswith(suffix):
                if task == "text-classification":
                    labels = {str(v).lower() for v in (config.get("id2label") or {}).values()}
                    if "entailment" in labels:
                        return "zero-shot-classification"
                if task == "text2text-generation":
                    specific = {k.split("_")[0] for k in (config.get("task_specific_params") or {})}
                    if len(specific) == 1 and specific <= {"summarization", "translation"}:
                        return specific.pop()
                return task
    return None


def fingerprint(path: Path) -> str:
    """A short hash that changes whenever the files behind a model change."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update((path / "config.json").read_bytes())
    return h.hexdigest()[:16]


def _pooling_mode(path: Path) -> str:
    """The pooling a sentence-transformers model declares, else mean."""
    cfg = path / "1_Pooling" / "config.json"
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return "mean"
    for key, mode in _POOLING_KEYS:
        if data.get(key):
            return mode
    return "mean"


def _mask_token(path: Path) -> str | None:
    """The tokenizer's mask token, from its saved configuration."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        try:
            value = json.loads((path / name).read_text()).get("mask_token")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            return value
    return None


def _declared_num_beams(path: Path, config: dict) -> int:
    """The beams generate() uses when a request names none: generation_config.json's, else config.json's."""
    try:
        generation = json.loads((path / "generation_config.json").read_text())
    except (OSError, ValueError):
        generation = config
    value = generation.get("num_beams") if isinstance(generation, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 1 else 1


def _max_seq_length(path: Path) -> int | None:
    """The sequence length a sentence-transformers model was trained with."""
    try:
        value = json.loads((path / "sentence_bert_config.json").read_text()).get("max_seq_length")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, names in os.walk(path, followlinks=True):
        for name in names:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _broken(path: Path, problem: str, model_id: str | None = None) -> ModelInfo:
    return ModelInfo(
        model_id=model_id or path.name, path=path, task=None, complete=False, problem=problem
    )
