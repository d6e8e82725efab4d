"""Validation of request bodies, before anything is queued."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from common.errors import BadRequest, InputTooLong, ValidationFailed
from common.settings import DEFAULT_WAIT_S, MAX_TIMEOUT_S, MAX_WAIT_S, MODEL_ID_RE, Settings

PREDICT_FIELDS = ("model_id", "inputs", "text", "parameters", "options")
OPTION_FIELDS = ("wait", "use_cache", "timeout")


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


def parse_json(raw: bytes):
    """Decode a JSON body; raise BadRequest (400) when it is not JSON."""
    if not raw or not raw.strip():
        raise BadRequest("request body is empty; send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def parse_predict(body, settings: Settings) -> PredictRequest:
    """Check the shape of a predict body; raise ValidationFailed (422)."""
    if not isinstance(body, dict):
        raise ValidationFailed("request body must be a JSON object")
    unknown = sorted(set(body) - set(PREDICT_FIELDS))
    if unknown:
        raise ValidationFailed(
            f"unknown field(s): {', '.join(unknown)}; accepted: {', '.join(PREDICT_FIELDS)}",
            field=unknown[0],
        )
    model_id = body.get("model_id")
    if model_id is None:
        raise ValidationFailed("model_id is required", field="model_id")
    if not isinstance(model_id, str) or not MODEL_ID_RE.fullmatch(model_id):
        raise ValidationFailed(
            "model_id must be a string matching ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", field="model_id"
        )
    if "inputs" in body and "text" in body:
        raise ValidationFailed("give either inputs or its alias text, not both", field="inputs")
    field = "inputs" if "inputs" in body else "text"
    items, is_list = _parse_inputs(body.get(field), field, settings)
    parameters = body.get("parameters")
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise ValidationFailed("parameters must be a JSON object", field="parameters")
    wait, use_cache, timeout = _parse_options(body.get("options"))
    return PredictRequest(model_id, items, is_list, parameters, wait, use_cache, timeout)


def _parse_inputs(value, field: str, settings: Settings) -> tuple[tuple, bool]:
    if value is None:
        raise ValidationFailed("inputs is required (a string or a list of strings)", field="inputs")
    if isinstance(value, list):
        if not value:
            raise ValidationFailed(f"{field} is an empty list", field=field)
        if len(value) > settings.max_items_per_request:
            raise ValidationFailed(
                f"{field} has {len(value)} items; at most {settings.max_items_per_request} "
                "(MAX_ITEMS_PER_REQUEST) per request",
                field=field,
            )
        return tuple(_check_item(v, f"{field}[{i}]", settings) for i, v in enumerate(value)), True
    return (_check_item(value, field, settings),), False


def _check_item(value, where: str, settings: Settings):
    if isinstance(value, dict):
        return value  # question answering; checked against the model's task (common.params.validate_item)
    if not isinstance(value, str):
        raise ValidationFailed(f"{where} must be a string (or, for question answering, an object)", field=where)
    if not value.strip():
        raise ValidationFailed(f"{where} is empty", field=where)
    if len(value) > settings.max_input_chars:
        raise InputTooLong(
            f"{where} has {len(value)} characters; at most {settings.max_input_chars} (MAX_INPUT_CHARS)",
            field=where,
        )
    return value


def _parse_options(options) -> tuple[float, bool, float | None]:
    if options is None:
        return DEFAULT_WAIT_S, True, None
    if not isinstance(options, dict):
        raise ValidationFailed("options must be a JSON object", field="options")
    unknown = sorted(set(options) - set(OPTION_FIELDS))
    if unknown:
        raise ValidationFailed(
            f"unknown option(s): {', '.join(unknown)}; accepted: {', '.join(OPTION_FIELDS)}",
            field=f"options.{unknown[0]}",
        )
    wait = options.get("wait", DEFAULT_WAIT_S)
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= MAX_WAIT_S:
        raise ValidationFailed(
            f"options.wait must be a number of seconds between 0 and {MAX_WAIT_S:g}", field="options.wait"
        )
    use_cache = options.get("use_cache", True)
    if not isinstance(use_cache, bool):
        raise ValidationFailed("options.use_cache must be true or false", field="options.use_cache")
    timeout = options.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not 0 < timeout <= MAX_TIMEOUT_S):
        raise ValidationFailed(
            f"options.timeout must be a number of seconds above 0 and at most {MAX_TIMEOUT_S:g}",
            field="options.timeout")
    return float(wait), use_cache, None if timeout is None else float(timeout)
