"""The OpenAPI 3 document of every endpoint, served at /openapi.json.

The request bodies are not written here: they are the JSON Schemas of the
pydantic models that validate them (webapp/schemas.py), turned into OpenAPI
3.0 (Swagger UI 4 reads 3.0), and the per-task parameters come from
common.params.TASK_PARAMS. What is written here by hand is what no
validator holds: the responses, their status codes and who may call what.
"""

from __future__ import annotations

from pydantic import BaseModel

from common.params import TASK_PARAMS
from common.requestid import MAX_REQUEST_ID_CHARS
from common.settings import Settings
from webapp.schemas import LoadBody, PlacementBody, SwitchBody, UnloadBody, predict_body

_ERROR = {"$ref": "#/components/schemas/Error"}
_PARAM_SCHEMA = {"bool": {"type": "boolean"}, "int": {"type": "integer"}, "float": {"type": "number"},
                 "enum": {"type": "string"}, "str": {"type": "string"},
                 "labels": {"type": "array", "items": {"type": "string"}}}
_REF_TEMPLATE = "#/components/schemas/{model}"


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def _json(schema: dict, description: str, headers: dict | None = None) -> dict:
    out = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


_LOCATION = {"Location": {"schema": {"type": "string"}, "description": "URL of the job"}}
# Every endpoint that reads a JSON body.
_BODY_ERRORS = {"400": _error("the body is empty or not valid JSON, or its HTTP framing is malformed"),
                "408": _error("the body did not arrive within BODY_TIMEOUT_S")}
_ADMIN = {**_BODY_ERRORS,
          "401": _error("ADMIN_TOKEN is set and the bearer token is missing or wrong"),
          "404": _error("the model is not in the store (unload: nor loaded on any worker)"),
          "413": _error("the body exceeds MAX_BODY_BYTES"),
          "422": _error("bad body: model_id, model_type, source, workers or wait"),
          "503": _error("no worker is alive, or the broker is down")}
_WORKER_STATES = {"type": "object", "properties": {
    "model_id": {"type": "string"},
    "workers": {"type": "object", "additionalProperties": {"type": "string"},
                "description": "worker name -> loaded | loading | unloaded | switched | error: <why> | gone"}}}

_PLACED = {"409": _error("the model has a placement (PUT /models/{model_id}/placement): change or delete that "
                          "instead")}
# A model's placement, desired and actual (common.assignment.convergence).
_PLACEMENT = {"type": "object", "nullable": True, "properties": {
    "replicas": {"type": "integer", "description": "the workers it should have (when placed by count)"},
    "workers": {"type": "array", "items": {"type": "string"}, "description": "the workers pinned (when pinned)"},
    "task": {"type": "string", "nullable": True},
    "assigned_to": {"type": "array", "items": {"type": "string"},
                    "description": "live workers whose placement names it (loaded, loading or to load)"},
    "serving_on": {"type": "array", "items": {"type": "string"}, "description": "live workers serving it now"},
    "not_live": {"type": "array", "items": {"type": "string"},
                 "description": "pinned workers not running now (they load it when they start)"},
    "converged": {"type": "boolean",
                  "description": "the live workers serving it are exactly the ones it should have"}}}
_MODELS = {"type": "object", "properties": {"models": {"type": "array", "items": {"type": "object", "properties": {
    "model_id": {"type": "string"}, "task": {"type": "string", "nullable": True},
    "loaded_on": {"type": "array", "items": {"type": "string"}},
    "changing_on": {"type": "object", "additionalProperties": {"type": "string"}},
    "size_bytes": {"type": "integer"}, "complete": {"type": "boolean"},
    "source": {"type": "string"}, "problem": {"type": "string"},
    "placement": _PLACEMENT}}}}}
_PLACEMENT_ANSWER = {"type": "object", "properties": {
    "model_id": {"type": "string"}, "placement": _PLACEMENT, "removed": {"type": "boolean"},
    "workers": {"type": "object", "additionalProperties": {"type": "string"},
                "description": "after a removal: each worker's state (unloading, unloaded)"}}}
_MODEL_ID_PARAMETER = [{"name": "model_id", "in": "path", "required": True,
                        "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}}]


_HEALTH = {"type": "object", "required": ["status"], "properties": {
    "status": {"type": "string", "enum": ["ok", "unavailable", "draining"]},
    "message": {"type": "string", "description": "what is down, or that this process is draining (SIGTERM)"}}}
_READY = {"200": _json(_HEALTH, "ready"),
          "503": _json(_HEALTH, "not ready, with the reason: broker, result store or workers down, or draining")}


def _body(model: type[BaseModel], components: dict) -> dict:
    """A requestBody holding `model`'s JSON Schema, its sub-models put in `components`."""
    schema = to_openapi_30(model.model_json_schema(ref_template=_REF_TEMPLATE))
    components.update(schema.pop("$defs", {}))
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def to_openapi_30(node):
    """A JSON Schema (draft 2020-12, as pydantic writes it) as an OpenAPI 3.0 schema.

    `anyOf: [X, {type: null}]` becomes X with `nullable`, a numeric
    exclusiveMinimum/Maximum becomes the bound with a boolean, `examples` one
    `example`, and pydantic's titles go (the property names say it).
    """
    if isinstance(node, list):
        return [to_openapi_30(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: to_openapi_30(v) for k, v in node.items() if k != "title" or not isinstance(v, str)}
    options = node.get("anyOf")
    if options and {"type": "null"} in options and len(options) == 2:
        (other,) = [o for o in options if o != {"type": "null"}]
        del node["anyOf"]
        if "$ref" in other:  # 3.0 ignores siblings of a $ref
            other = {"allOf": [other]}
        node = {**other, **node, "nullable": True}
    if isinstance(node.get("examples"), list) and node["examples"]:  # 3.0 schemas have one `example`
        node["example"] = node.pop("examples")[0]
    for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(key), (int, float)) and not isinstance(node[key], bool):
            node[bound], node[key] = node[key], True
    return node


def build_openapi(settings: Settings) -> dict:
    """The document, with the limits of this deployment filled in."""
    params = {
        task: {
            p.name: {**_PARAM_SCHEMA[p.kind],
                     **({"enum": list(p.choices)} if p.choices else {}),
                     "description": p.doc}
            for p in spec
        }
        for task, spec in TASK_PARAMS.items()
    }
    components: dict = {}
    predict = _body(predict_body(settings.max_items_per_request, settings.max_input_chars), components)
    # What the body model holds as a free object: each task's parameters (common.params, checked per model).
    predict["content"]["application/json"]["schema"]["properties"]["parameters"].update(
        description="task parameters; per task: " + "; ".join(f"{t}: {', '.join(p) or 'none'}"
                                                               for t, p in params.items()),
        properties={k: v for spec in params.values() for k, v in spec.items()})
    job = {
        "type": "object",
        "properties": {
            "job_id": {"type": "string"},
            "model_id": {"type": "string", "nullable": True},
            "status": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
            "result": {"description": "the shape of inputs: one output, or a list in order"},
            "error": {"$ref": "#/components/schemas/ErrorBody"},
            "created_at": {"type": "string", "format": "date-time", "nullable": True},
            "request_id": {"type": "string", "nullable": True,
                           "description": "the X-Request-Id of the request that created the job"},
            "started_at": {"type": "string", "format": "date-time"},
            "finished_at": {"type": "string", "format": "date-time"},
        },
    }
    accepted = {
        "type": "object",
        "properties": {"job_id": {"type": "string"}, "status": {"type": "string"},
                       "status_url": {"type": "string"}},
    }
    body_errors = {
        **_BODY_ERRORS,
        "404": _error("the model is not in the store"),
        "413": _error(f"the body exceeds {settings.max_body_bytes} bytes"),
        "422": _error("validation failed: missing or empty inputs, bad parameter, input too long, too many items, "
                      "more work than a per-request budget (over_budget)"),
        "429": _error("the model's queue is full; see Retry-After"),
        "503": _error("no worker serves the model, or the broker is down"),
    }
    return add_request_ids(add_security(settings, {
        "openapi": "3.0.3",
        "info": {
            "title": "Async Transformer Framework",
            "version": "0.1.0",
            "description": "Serve Hugging Face transformers models over HTTP; requests are pooled "
                           "into batches by Celery workers.",
        },
        "paths": {
            "/predict": {"post": {
                "summary": "Run inputs through a model and wait for the result",
                "requestBody": predict,
                "responses": {
                    "200": _json({"type": "object", "properties": {
                        "job_id": {"type": "string", "nullable": True,
                                   "description": "null when every item came from the cache"},
                        "model_id": {"type": "string"},
                        "status": {"type": "string"}, "result": {}, "cached": {"type": "boolean"},
                        "timings": {"type": "object"}}}, "the job succeeded"),
                    "202": _json(accepted, "not done within options.wait; poll status_url", _LOCATION),
                    "424": _error("the model failed on an input"),
                    "504": _error("options.timeout passed before the model got to the job"),
                    **body_errors,
                },
            }},
            "/jobs": {"post": {
                "summary": "Queue inputs for a model",
                "requestBody": predict,
                "responses": {"202": _json(accepted, "queued", _LOCATION), **body_errors},
            }},
            "/jobs/{job_id}": {
                "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "get": {"summary": "A job's status and result",
                        "responses": {"200": _json(job, "the job"), "404": _error("unknown or expired job")}},
                "delete": {"summary": "Cancel a job that has not started",
                           "responses": {"200": _json(accepted, "cancelled"),
                                         "404": _error("unknown or expired job"),
                                         "409": _error("the job already runs or has finished")}},
            },
            "/models": {"get": {"summary": "Every model in the store, where it is loaded, and its placement",
                                "responses": {"200": _json(_MODELS, "the models")}}},
            "/models/load": {"post": {
                "summary": "Load a model on live workers (celery control load_model)",
                "requestBody": _body(LoadBody, components),
                "responses": {"200": _json(_WORKER_STATES, "each worker's state"), **_ADMIN, **_PLACED}}},
            "/models/unload": {"post": {
                "summary": "Unload a model and free its memory (celery control unload_model)",
                "requestBody": _body(UnloadBody, components),
                "responses": {"200": _json(_WORKER_STATES, "each worker's state"), **_ADMIN, **_PLACED}}},
            "/models/{model_id}/placement": {
                "parameters": _MODEL_ID_PARAMETER,
                "put": {"summary": "Serve a model on N live workers, or on named workers; the workers converge "
                                   "(python -m model_store place)",
                        "requestBody": _body(PlacementBody, components),
                        "responses": {"200": _json(_PLACEMENT_ANSWER, "the placement, desired and actual"),
                                      **_ADMIN, "422": _error("bad body: replicas, workers, task or wait")}},
                "delete": {"summary": "Remove a model's placement and unload it from every worker",
                           "responses": {"200": _json(_PLACEMENT_ANSWER, "removed"),
                                         "404": _error("the model is not in the store and has no placement"),
                                         "503": _error("the broker is down")}}},
            "/models/switch": {"post": {
                "summary": "Serve model_id from another model directory (a new version), no failed request",
                "requestBody": _body(SwitchBody, components),
                "responses": {"200": _json(_WORKER_STATES, "each worker's state"), **_ADMIN}}},
            "/workers": {"get": {"summary": "Live workers",
                                 "responses": {"200": _json({"type": "array"}, "the workers")}}},
            "/health/live": {"get": {"summary": "Liveness: the process answers (no I/O)",
                                     "responses": {"200": _json(_HEALTH, "alive")}}},
            "/health/ready": {"get": {"summary": "Readiness of broker, result store and workers",
                                      "responses": _READY}},
            "/health": {"get": {"summary": "The same as /health/ready", "responses": _READY}},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "text exposition format",
                                                       "content": {"text/plain": {}}}}}},
        },
        "components": {"schemas": {
            **components,
            "ErrorBody": {"type": "object", "required": ["type", "message"],
                          "properties": {"type": {"type": "string"}, "message": {"type": "string"}}},
            "Error": {"type": "object", "required": ["error"],
                      "properties": {"error": {"$ref": "#/components/schemas/ErrorBody"}}},
        }},
    }))


# Who may call what (webapp/auth.py, webapp/ratelimit.py), declared per operation so
# Swagger UI shows "Authorize" and sends the token, and a fuzzer knows what to expect.
_INFERENCE_PATHS = ("/predict", "/jobs", "/jobs/{job_id}")
_ADMIN_PATHS = ("/models/load", "/models/unload", "/models/switch", "/models/{model_id}/placement")


def add_security(settings: Settings, doc: dict) -> dict:
    """Add the bearer scheme, each operation's security, and the 401/403/415/429 it may answer."""
    doc["components"]["securitySchemes"] = {"bearer": {
        "type": "http", "scheme": "bearer",
        "description": "API_TOKENS for /predict and /jobs (when set); ADMIN_TOKEN for /models/load|unload|switch "
                       "and /models/{model_id}/placement (and for inference too)"}}
    bearer = [{"bearer": []}]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            responses = op["responses"]
            if path in _INFERENCE_PATHS and settings.api_tokens:
                op["security"] = bearer
                responses["401"] = _error("API_TOKENS is set and the bearer token is missing or unknown")
            elif path in _ADMIN_PATHS and settings.admin_token:
                op["security"] = bearer
                responses["401"] = _error("the bearer token is missing or unknown")
                responses["403"] = _error("the token is an API token, not ADMIN_TOKEN")
            elif path in _ADMIN_PATHS:
                op["security"] = []
                responses["403"] = _error("ADMIN_TOKEN is unset and the request is not from this machine")
            else:
                op["security"] = []
            if method in ("post", "put"):
                responses["415"] = _error("the body is not sent as Content-Type: application/json")
            if settings.rate_limit and not (path == "/metrics" or path.startswith("/health")):
                limited = _error(f"RATE_LIMIT ({settings.rate_limit}) reached for this token or address")
                if "429" in responses:
                    limited["description"] = responses["429"]["description"] + "; or " + limited["description"]
                limited["headers"] = {"Retry-After": {"schema": {"type": "integer"},
                                                      "description": "seconds to wait"}}
                responses["429"] = limited
    return doc


_REQUEST_ID_PARAMETERS = [
    # Any value is accepted (one that fails the check is replaced, not refused): no constraint in the schema.
    {"name": "X-Request-Id", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "the request's id, echoed on the response and kept with its job and on its log lines; "
                    f"printable ASCII, at most {MAX_REQUEST_ID_CHARS} characters, no space at either end "
                    "(anything else is replaced by a generated id)"},
    {"name": "traceparent", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "W3C Trace Context (00-<32 hex>-<16 hex>-<2 hex>), carried with the job to the worker; "
                    "ignored when malformed"},
]
_REQUEST_ID_ECHO = {"schema": {"type": "string"},
                    "description": "the request's X-Request-Id, or the id generated for it"}


def add_request_ids(doc: dict) -> dict:
    """Every operation takes X-Request-Id and traceparent, and every answer echoes X-Request-Id."""
    for item in doc["paths"].values():
        for method, op in item.items():
            if method == "parameters":
                continue
            op["parameters"] = [*op.get("parameters", []), *_REQUEST_ID_PARAMETERS]
            # New dicts: responses share the module's constants (_BODY_ERRORS, _LOCATION).
            op["responses"] = {status: {**response, "headers": {**response.get("headers", {}),
                                                                "X-Request-Id": _REQUEST_ID_ECHO}}
                               for status, response in op["responses"].items()}
    return doc
