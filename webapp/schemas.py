"""Validation of request bodies, before anything is queued.

Each body is defined once, as a pydantic model: pydantic (its Rust core,
in strict mode: no coercion) validates it, and webapp/openapi.py emits the
same model's JSON Schema into the OpenAPI document, so the document and the
validation cannot disagree. The limits that are settings (MAX_ITEMS_PER_REQUEST,
MAX_INPUT_CHARS) are part of the model, built once per pair of values.

Error messages stay the API's own: the first of pydantic's errors, in the
order a reader checks a body (unknown fields, model_id, inputs, parameters,
options), becomes one ValidationFailed naming the field. What a model's
task accepts (parameters, input items) is checked afterwards by
common.params, against the model's task.
"""

from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Union

import orjson
from pydantic import BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag, ValidationError

from common.errors import BadRequest, ValidationFailed
from common.params import NOT_BLANK, TASK_ALIASES, TASK_PARAMS, empty_text, text_too_long
from common.placement import MAX_REPLICAS, WORKER_NAME_RE, check_placement
from common.settings import DEFAULT_WAIT_S, MAX_TIMEOUT_S, MAX_WAIT_S, MODEL_ID_PATTERN

DEFAULT_ADMIN_WAIT_S = 120.0
# What `model_type` accepts (common.params.normalize_task): task names, their underscore forms, aliases.
MODEL_TYPES = sorted({"", *TASK_PARAMS, *(t.replace("-", "_") for t in TASK_PARAMS), *TASK_ALIASES,
                      *(a.replace("-", "_") for a in TASK_ALIASES)})

_STRICT = ConfigDict(extra="forbid", strict=True)
ModelId = Annotated[str, Field(pattern=MODEL_ID_PATTERN, examples=["minilm"])]
Wait = Annotated[float, Field(ge=0, le=MAX_WAIT_S)]


@dataclass(frozen=True)
class PredictRequest:
    """A validated /predict or /jobs body (parameters not yet checked per task)."""

    model_id: str
    items: tuple
    is_list: bool
    parameters: dict
    wait: float
    use_cache: bool
    timeout: float | None = None  # seconds the job may wait for the model before it is dropped


class Options(BaseModel):
    """options of a /predict or /jobs body."""

    model_config = _STRICT
    wait: Wait = Field(DEFAULT_WAIT_S, description="seconds /predict waits before answering 202 with the job's URL")
    use_cache: bool = True
    timeout: float | None = Field(None, gt=0, le=MAX_TIMEOUT_S,
                                  description="seconds the job may wait for the model; past it the job is "
                                              "dropped unrun (504 deadline_exceeded)")


def _list_or_one(value) -> str:
    return "list" if isinstance(value, list) else "one"


def _object_or_text(value) -> str:
    return "object" if isinstance(value, dict) else "text"


def _no_default(**extra):
    """json_schema_extra for a field that may be absent but never null: no `default: null` in its schema."""
    def edit(schema: dict) -> None:
        schema.pop("default", None)
        schema.update(extra)
    return edit


@lru_cache(maxsize=8)
def predict_body(max_items: int, max_chars: int) -> type[BaseModel]:
    """The /predict and /jobs body under these limits (MAX_ITEMS_PER_REQUEST, MAX_INPUT_CHARS)."""
    text = Annotated[str, StringConstraints(min_length=1, max_length=max_chars, pattern=NOT_BLANK)]
    # An object is a question-answering item; common.params.validate_item checks it against the task.
    item = Annotated[Union[Annotated[text, Tag("text")],
                           Annotated[dict[str, Any], Tag("object"), Field(description="question-answering: "
                                                                                      "{question, context}")]],
                     Discriminator(_object_or_text)]
    one_or_many = Annotated[Union[Annotated[list[item], Field(min_length=1, max_length=max_items), Tag("list")],
                                  Annotated[item, Tag("one")]],
                            Discriminator(_list_or_one)]

    class PredictBody(BaseModel):  # annotations evaluated here: no `from __future__ import annotations`
        # inputs, or its alias text: one of the two, never both (422).
        model_config = ConfigDict(**_STRICT, title="PredictBody", json_schema_extra={
            "anyOf": [{"required": ["inputs"]}, {"required": ["text"]}], "not": {"required": ["inputs", "text"]}})
        model_id: ModelId
        # Absent is allowed (the other one is given); null is not: it is a missing input (422).
        inputs: one_or_many = Field(None, json_schema_extra=_no_default(
            example="The quick brown fox jumps over the lazy dog."))
        text: one_or_many = Field(None, description="alias of inputs (give one of the two)",
                                  json_schema_extra=_no_default())
        parameters: dict[str, Any] | None = Field(None, description="task parameters (common.params)")
        options: Options | None = None

    return PredictBody


Workers = Annotated[list[str] | None, Field(description="worker names; default: every live worker")]
AdminWait = Annotated[Wait, Field(description="seconds to wait for the workers to finish")]


class LoadBody(BaseModel):
    """POST /models/load."""

    model_config = _STRICT
    model_id: ModelId
    model_type: str | None = Field(None, json_schema_extra={"enum": [*MODEL_TYPES, None]},
                                   description="pipeline task, e.g. feature-extraction or feature_extraction; "
                                               "default (absent, null or empty): from the model's config")
    workers: Workers = None
    wait: AdminWait = DEFAULT_ADMIN_WAIT_S


class UnloadBody(BaseModel):
    """POST /models/unload."""

    model_config = _STRICT
    model_id: ModelId
    workers: Workers = None
    wait: AdminWait = DEFAULT_ADMIN_WAIT_S


class SwitchBody(BaseModel):
    """POST /models/switch: it goes to every worker that has the model, so no `workers`."""

    model_config = _STRICT
    model_id: ModelId
    source: ModelId = Field(description="the model directory to serve model_id from", examples=["minilm-v2"])
    wait: AdminWait = DEFAULT_ADMIN_WAIT_S


WorkerName = Annotated[str, Field(pattern=f"^{WORKER_NAME_RE.pattern}$", examples=["cpu@host"])]


class PlacementBody(BaseModel):
    """PUT /models/<model_id>/placement: `replicas` or `workers`, one of the two."""

    model_config = ConfigDict(**_STRICT, json_schema_extra={
        "oneOf": [{"required": ["replicas"]}, {"required": ["workers"]}]})
    replicas: int | None = Field(None, ge=0, le=MAX_REPLICAS, json_schema_extra=_no_default(),
                                 description="serve the model on this many live workers, the least loaded with "
                                             "room (MAX_MODELS_PER_WORKER, device memory); 0 removes the placement")
    workers: list[WorkerName] | None = Field(None, min_length=1, max_length=MAX_REPLICAS,
                                             json_schema_extra=_no_default(),
                                             description="serve the model on exactly these workers (names not "
                                                         "live now are kept: they load it when they start)")
    task: str | None = Field(None, json_schema_extra={"enum": [*MODEL_TYPES, None]},
                             description="pipeline task to load it as; default: from the model's config")
    wait: AdminWait = Field(0.0, description="seconds to wait for the workers to converge; 0 answers at once")


def parse_placement(body) -> PlacementBody:
    """Check a placement body; raise ValidationFailed (422) naming the field."""
    try:
        parsed = parse_admin(body, PlacementBody)
    except ValidationFailed as exc:
        field = exc.details.get("field")
        problem = check_placement(body.get("replicas"), body.get("workers")) if field in ("replicas", "workers") \
            else None
        if problem:
            raise ValidationFailed(problem, field=field) from None
        raise
    problem = check_placement(parsed.replicas, parsed.workers)
    if problem:
        raise ValidationFailed(problem, field="workers" if parsed.replicas is None and parsed.workers else "replicas")
    return parsed


def parse_json(raw: bytes):
    """Decode a JSON body; raise BadRequest (400) when it is not JSON."""
    if not raw or not raw.strip():
        raise BadRequest("request body is empty; send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def parse_predict(body, settings) -> PredictRequest:
    """Check the shape of a predict body; raise ValidationFailed (422)."""
    if not isinstance(body, dict):
        raise ValidationFailed("request body must be a JSON object")
    model = predict_body(settings.max_items_per_request, settings.max_input_chars)
    try:
        parsed = model.model_validate(body)
    except ValidationError as exc:
        raise _predict_error(body, exc.errors(include_url=False), model) from None
    if "inputs" in body and "text" in body:
        raise _both()
    field = "inputs" if parsed.inputs is not None else "text"
    value = getattr(parsed, field)
    if value is None:
        raise _inputs_required()
    is_list = isinstance(value, list)
    options = parsed.options or Options()
    return PredictRequest(parsed.model_id, tuple(value) if is_list else (value,), is_list,
                          parsed.parameters or {}, options.wait, options.use_cache, options.timeout)


def parse_admin(body, model: type[BaseModel]) -> BaseModel:
    """Check an admin body against its model; raise ValidationFailed (422)."""
    if not isinstance(body, dict):
        raise ValidationFailed("request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _admin_error(exc.errors(include_url=False), model) from None


# Translation of pydantic's errors into the API's messages, in the order the fields are checked.

def _predict_error(body: dict, errors: list[dict], model: type[BaseModel]) -> ValidationFailed:
    unknown = _unknown_fields(errors, 1, "field(s)", model)
    if unknown:
        return unknown
    by_field = {}
    for error in errors:
        by_field.setdefault(error["loc"][0], error)
    if "model_id" in by_field:
        if body.get("model_id") is None:  # absent or null
            return ValidationFailed("model_id is required", field="model_id")
        return ValidationFailed(f"model_id must be a string matching {MODEL_ID_PATTERN}", field="model_id")
    if "inputs" in body and "text" in body:
        return _both()
    if body.get("inputs" if "inputs" in body else "text") is None:
        return _inputs_required()
    for field in ("inputs", "text"):
        if field in by_field:
            return _inputs_error(field, by_field[field])
    if "parameters" in by_field:
        return ValidationFailed("parameters must be a JSON object", field="parameters")
    options = [e for e in errors if e["loc"][0] == "options"]
    error = _unknown_fields(options, 2, "option(s)", Options, "options.")
    if error:
        return error
    error = options[0]
    if len(error["loc"]) == 1:
        return ValidationFailed("options must be a JSON object", field="options")
    name = error["loc"][1]
    messages = {"wait": f"options.wait must be a number of seconds between 0 and {MAX_WAIT_S:g}",
                "use_cache": "options.use_cache must be true or false",
                "timeout": f"options.timeout must be a number of seconds above 0 and at most {MAX_TIMEOUT_S:g}"}
    return ValidationFailed(messages[name], field=f"options.{name}")


def _admin_error(errors: list[dict], model: type[BaseModel]) -> ValidationFailed:
    unknown = _unknown_fields(errors, 1, "field(s)", model)
    if unknown:
        return unknown
    missing = [e["loc"][0] for e in errors if e["type"] == "missing"]
    if missing:  # each required field before any field's value, in the model's order
        name = min(missing, key=list(model.model_fields).index)
        return ValidationFailed(f"{name} is required", field=name)
    name = min((e["loc"][0] for e in errors), key=_ADMIN_CHECKS.index)
    messages = {"workers": "workers must be a list of worker names", "model_type": "model_type must be a string",
                "task": "task must be a string (a pipeline task)",
                "wait": f"wait must be a number of seconds between 0 and {MAX_WAIT_S:g}"}
    return ValidationFailed(messages.get(name, f"{name} must be a model id ({MODEL_ID_PATTERN})"), field=name)


# The order an admin body's fields are checked in: the first bad one is named.
_ADMIN_CHECKS = ("model_id", "source", "replicas", "workers", "wait", "model_type", "task")


def _inputs_required() -> ValidationFailed:
    return ValidationFailed("inputs is required (a string or a list of strings)", field="inputs")


def _both() -> ValidationFailed:
    return ValidationFailed("give either inputs or its alias text, not both", field="inputs")


def _unknown_fields(errors: list[dict], depth: int, noun: str, model: type[BaseModel],
                    where: str = "") -> ValidationFailed | None:
    unknown = sorted(e["loc"][-1] for e in errors if e["type"] == "extra_forbidden" and len(e["loc"]) == depth)
    if not unknown:
        return None
    return ValidationFailed(f"unknown {noun}: {', '.join(unknown)}; accepted: {', '.join(model.model_fields)}",
                            field=f"{where}{unknown[0]}")


def _inputs_error(field: str, error: dict) -> ValidationFailed:
    """The message for the first error under inputs (or text): the list, or the first bad item."""
    loc, kind = error["loc"], error["type"]
    if loc[1:] == ("list",):
        if kind == "too_short":
            return ValidationFailed(f"{field} is an empty list", field=field)
        return ValidationFailed(f"{field} has {len(error['input'])} items; at most {error['ctx']['max_length']} "
                                "(MAX_ITEMS_PER_REQUEST) per request", field=field)
    where = f"{field}[{loc[2]}]" if loc[1] == "list" else field
    if kind == "string_too_long":
        return text_too_long(where, len(error["input"]), error["ctx"]["max_length"])
    if kind in ("string_too_short", "string_pattern_mismatch"):
        return empty_text(where)
    return ValidationFailed(f"{where} must be a string (or, for question answering, an object)", field=where)
