"""What each pipeline task accepts as parameters, checked before queueing.

Pure data and functions: the webapp validates a request here, so a bad
parameter is a 422 naming it, never a crash on the worker.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import ValidationFailed

POOLING_CHOICES = ("mean", "cls", "max", "lasttoken", "none")


@dataclass(frozen=True)
class Param:
    """One parameter a task takes: its JSON type and bounds."""

    name: str
    kind: str  # "bool" | "int" | "float" | "enum"
    default: object = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple = ()
    doc: str = ""

    def check(self, value):
        """Return `value` if it fits, else raise ValidationFailed naming it."""
        where = f"parameters.{self.name}"
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValidationFailed(f"{where} must be true or false", field=where)
            return value
        if self.kind in ("int", "float"):
            ok_types = (int,) if self.kind == "int" else (int, float)
            if isinstance(value, bool) or not isinstance(value, ok_types):
                noun = "an integer" if self.kind == "int" else "a number"
                raise ValidationFailed(f"{where} must be {noun}", field=where)
            if (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum
            ):
                raise ValidationFailed(
                    f"{where} must be between {self.minimum} and {self.maximum}, got {value}",
                    field=where,
                )
            return value
        if self.kind == "enum":
            if value not in self.choices:
                raise ValidationFailed(
                    f"{where} must be one of {', '.join(map(str, self.choices))}", field=where
                )
            return value
        raise AssertionError(f"unknown parameter kind {self.kind}")


TASK_PARAMS: dict[str, tuple[Param, ...]] = {
    "feature-extraction": (
        Param("pooling", "enum", choices=POOLING_CHOICES,
              doc="how token vectors become one vector; default: the model's declared pooling, else mean; "
                  "'none' returns the token vectors"),
        Param("normalize", "bool", default=False, doc="L2-normalize each vector"),
        Param("truncate", "bool", default=True,
              doc="cut inputs longer than the model's maximum sequence length; false makes them fail"),
    ),
}

SERVED_TASKS = tuple(TASK_PARAMS)

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


def validate_parameters(task: str, params, defaults: dict | None = None) -> dict:
    """Check `params` against `task`; return them with defaults filled in.

    `defaults` are per-model defaults (e.g. the model's declared pooling)
    that take the place of the task's own.
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
        if name in params and params[name] is not None:
            out[name] = param.check(params[name])
        elif defaults and name in defaults:
            out[name] = defaults[name]
        elif param.default is not None:
            out[name] = param.default
    return out
