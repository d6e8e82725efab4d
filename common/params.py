"""What each task accepts, as parameters and as input items, checked before queueing.

Pure data and functions: the webapp validates a request here, so a bad
parameter or a wrong kind of input is a 422 naming it, never a crash on
the worker.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import InputTooLong, ValidationFailed

POOLING_CHOICES = ("mean", "cls", "max", "lasttoken", "none")
# Generation parameters whose upper bound is a setting, not a constant.
MAX_NEW_TOKENS_PARAM = "max_new_tokens"
MAX_CANDIDATE_LABELS = 64
MAX_LABEL_CHARS = 200


@dataclass(frozen=True)
class Param:
    """One parameter a task takes: its JSON type and bounds."""

    name: str
    kind: str  # "bool" | "int" | "float" | "enum" | "str" | "labels"
    default: object = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple = ()
    exclusive_minimum: bool = False
    required: bool = False
    doc: str = ""

    def check(self, value, maximum=None):
        """Return `value` if it fits, else raise ValidationFailed naming it."""
        where = f"parameters.{self.name}"
        maximum = self.maximum if maximum is None else maximum
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValidationFailed(f"{where} must be true or false", field=where)
            return value
        if self.kind in ("int", "float"):
            ok_types = (int,) if self.kind == "int" else (int, float)
            if isinstance(value, bool) or not isinstance(value, ok_types):
                noun = "an integer" if self.kind == "int" else "a number"
                raise ValidationFailed(f"{where} must be {noun}", field=where)
            low_ok = self.minimum is None or (value > self.minimum if self.exclusive_minimum
                                              else value >= self.minimum)
            if not low_ok or (maximum is not None and value > maximum):
                low = f"above {self.minimum:g}" if self.exclusive_minimum else f"at least {self.minimum:g}"
                high = f" and at most {maximum:g}" if maximum is not None else ""
                raise ValidationFailed(f"{where} must be {low}{high}, got {value}", field=where)
            return value
        if self.kind == "enum":
            if value not in self.choices:
                raise ValidationFailed(
                    f"{where} must be one of {', '.join(map(str, self.choices))}", field=where
                )
            return value
        if self.kind == "str":
            if not isinstance(value, str) or not value or len(value) > MAX_LABEL_CHARS:
                raise ValidationFailed(f"{where} must be a non-empty string of at most {MAX_LABEL_CHARS} "
                                       "characters", field=where)
            if self.name == "hypothesis_template" and "{}" not in value:
                raise ValidationFailed(f"{where} must contain {{}} where the label goes", field=where)
            return value
        if self.kind == "labels":
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if (not isinstance(value, list) or not value or len(value) > MAX_CANDIDATE_LABELS
                    or not all(isinstance(v, str) and v.strip() and len(v) <= MAX_LABEL_CHARS for v in value)):
                raise ValidationFailed(f"{where} must be a list of 1 to {MAX_CANDIDATE_LABELS} non-empty strings",
                                       field=where)
            return value
        raise AssertionError(f"unknown parameter kind {self.kind}")


_SAMPLING = (
    Param("do_sample", "bool", doc="sample instead of greedy/beam decoding"),
    Param("temperature", "float", minimum=0, exclusive_minimum=True, maximum=10),
    Param("top_k", "int", minimum=0, maximum=10_000),
    Param("top_p", "float", minimum=0, exclusive_minimum=True, maximum=1),
    Param("repetition_penalty", "float", minimum=0, exclusive_minimum=True, maximum=10),
    Param("num_return_sequences", "int", minimum=1, maximum=8),
)
_MAX_NEW_TOKENS = Param(MAX_NEW_TOKENS_PARAM, "int", default=32, minimum=1,
                        doc="tokens to generate; at most MAX_NEW_TOKENS")
_SEQ2SEQ = (_MAX_NEW_TOKENS, Param("num_beams", "int", minimum=1, maximum=8), *_SAMPLING)

TASK_PARAMS: dict[str, tuple[Param, ...]] = {
    "feature-extraction": (
        Param("pooling", "enum", choices=POOLING_CHOICES,
              doc="how token vectors become one vector; default: the model's declared pooling, else mean; "
                  "'none' returns the token vectors"),
        Param("normalize", "bool", default=False, doc="L2-normalize each vector"),
        Param("truncate", "bool", default=True,
              doc="cut inputs longer than the model's maximum sequence length; false makes them fail"),
    ),
    "text-classification": (
        Param("top_k", "int", minimum=1, maximum=1000, doc="return the k best labels (a list) instead of the best"),
        Param("function_to_apply", "enum", choices=("softmax", "sigmoid", "none")),
    ),
    "token-classification": (
        Param("aggregation_strategy", "enum", choices=("none", "simple", "first", "average", "max"),
              doc="group sub-word tokens into entities"),
    ),
    "question-answering": (
        Param("top_k", "int", default=1, minimum=1, maximum=20),
        Param("max_answer_len", "int", default=15, minimum=1, maximum=512, doc="longest answer, in tokens"),
        Param("handle_impossible_answer", "bool", default=False, doc="allow the empty answer"),
    ),
    "fill-mask": (
        Param("top_k", "int", default=5, minimum=1, maximum=100),
    ),
    "zero-shot-classification": (
        Param("candidate_labels", "labels", required=True, doc="the labels to choose from"),
        Param("hypothesis_template", "str", doc='e.g. "This example is {}."'),
        Param("multi_label", "bool", default=False),
    ),
    "text-generation": (
        _MAX_NEW_TOKENS, *_SAMPLING,
        Param("return_full_text", "bool", default=True, doc="include the prompt in generated_text"),
    ),
    "text2text-generation": _SEQ2SEQ,
    "summarization": _SEQ2SEQ,
    "translation": _SEQ2SEQ,
}

SERVED_TASKS = tuple(TASK_PARAMS)
# Tasks that generate tokens: a request's work grows with max_new_tokens, beams and sequences.
GENERATION_TASKS = ("text-generation", "text2text-generation", "summarization", "translation")
# The kind of input item a task takes: a string, or {"question", "context"}.
QA_TASKS = ("question-answering",)

# Other names transformers' pipeline() accepts for a task.
TASK_ALIASES = {
    "sentiment-analysis": "text-classification",
    "ner": "token-classification",
}


def normalize_task(name):
    """A `model_type` as given (task name, underscore form or alias) -> the task; None stays None."""
    if name is None or name == "":
        return None
    if not isinstance(name, str):
        raise ValidationFailed("model_type must be a string", field="model_type")
    task = name.strip().lower().replace("_", "-")
    task = TASK_ALIASES.get(task, task)
    if task not in TASK_PARAMS:
        raise ValidationFailed(f"model_type {name!r} is not a served task; served: {', '.join(SERVED_TASKS)}",
                               field="model_type")
    return task


def validate_parameters(task: str, params, defaults: dict | None = None, max_new_tokens: int | None = None) -> dict:
    """Check `params` against `task`; return them with defaults filled in.

    `defaults` are per-model defaults (e.g. the model's declared pooling)
    that take the place of the task's own; `max_new_tokens` is the
    MAX_NEW_TOKENS setting.
    """
    if task not in TASK_PARAMS:
        raise ValidationFailed(f"task {task!r} is not served", field="model_id")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValidationFailed("parameters must be a JSON object", field="parameters")
    spec = {p.name: p for p in TASK_PARAMS[task]}
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise ValidationFailed(
            f"unknown parameter(s) for {task}: {', '.join(unknown)}; "
            f"accepted: {', '.join(spec) or 'none'}",
            field=f"parameters.{unknown[0]}",
        )
    out = {}
    for name, param in spec.items():
        limit = max_new_tokens if name == MAX_NEW_TOKENS_PARAM else None
        if name in params and params[name] is not None:
            out[name] = param.check(params[name], limit)
        elif defaults and name in defaults:
            out[name] = defaults[name]
        elif param.default is not None:
            out[name] = param.default if limit is None else min(param.default, limit)
        elif param.required:
            raise ValidationFailed(f"parameters.{name} is required for {task}", field=f"parameters.{name}")
    if out.get("num_return_sequences", 1) > 1 and not out.get("do_sample") and out.get("num_beams", 1) < \
            out["num_return_sequences"]:
        raise ValidationFailed("parameters.num_return_sequences > 1 needs do_sample or num_beams >= it",
                               field="parameters.num_return_sequences")
    return out


def validate_item(task: str, item, where: str, max_chars: int, mask_token: str | None = None):
    """One input item for `task`: a string, or {"question", "context"}; raise ValidationFailed."""
    if task in QA_TASKS:
        if not isinstance(item, dict) or set(item) != {"question", "context"}:
            raise ValidationFailed(f'{where} must be {{"question": "...", "context": "..."}} for {task}',
                                   field=where)
        for key in ("question", "context"):
            _check_text(item[key], f"{where}.{key}", max_chars)
        return item
    _check_text(item, where, max_chars)
    if task == "fill-mask" and mask_token and mask_token not in item:
        raise ValidationFailed(f"{where} must contain the mask token {mask_token} for the model to fill",
                               field=where)
    return item


def _check_text(value, where: str, max_chars: int) -> None:
    if not isinstance(value, str):
        raise ValidationFailed(f"{where} must be a string", field=where)
    if not value.strip():
        raise empty_text(where)
    if len(value) > max_chars:
        raise text_too_long(where, len(value), max_chars)


# What a text input must be, checked here per task and by webapp/schemas.py's
# pydantic model for the request's shape; both name a bad text the same way.
# NOT_BLANK is the schema's form of `value.strip()` above: a character
# str.strip() keeps (Unicode's White_Space, regex \s, plus the separators \x1c-\x1f).
NOT_BLANK = r"[^\s\x1c-\x1f]"


def empty_text(where: str) -> ValidationFailed:
    return ValidationFailed(f"{where} is empty", field=where)


def text_too_long(where: str, length: int, max_chars: int) -> InputTooLong:
    return InputTooLong(f"{where} has {length} characters; at most {max_chars} (MAX_INPUT_CHARS)", field=where)
