"""schemathesis against the live /openapi.json: no server error, and every answer as the document says.

The stack is its own (a Redis, a worker serving minilm, the webapp under
gunicorn), so the admin endpoints can be fuzzed too: whatever they load,
unload or switch touches no other test. Its limits are small (4 items of
200 characters, 8 new tokens), and the document, which states the limits of
the deployment, keeps generated requests within them; every wait is cut to
a second or two. Examples per operation: FUZZ_EXAMPLES (default 25).
"""

from __future__ import annotations

import json
import os

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from common.settings import MAX_WAIT_S, Settings
from devtools.redis_server import EmbeddedRedis
from tests.helpers import Webapp, Worker, service_env
from webapp.openapi import build_openapi

MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
MAX_PREDICT_WAIT_S = 2.0  # options.wait of /predict, cut to this
MAX_ADMIN_WAIT_S = 1.0  # wait of /models/*, cut to this
# The stack's limits; the document states them, so generated requests keep within them.
LIMITS = {"max_items_per_request": 4, "max_input_chars": 200, "max_new_tokens": 8, "max_models_per_worker": 3}

# The document the stack serves, built as the webapp builds it (the test checks that it is the
# live one): schemathesis's pytest plugin needs it before the stack is up, to make one test per
# operation (its fixture-based loader does not work with this pytest).
DOCUMENT = build_openapi(Settings(**LIMITS))
schema = schemathesis.openapi.from_dict(DOCUMENT)


@pytest.fixture(scope="module")
def fuzz_stack(model_dir, log_dir):
    """A Redis, a worker serving minilm and a webapp, for this module alone."""
    with EmbeddedRedis() as server:
        env = service_env(server.url, model_dir, preload_models="minilm", **LIMITS)
        worker = Worker("fuzz", env, log_dir).wait_ready()
        app = Webapp(env, log_dir, "--workers", "1", "--threads", "16").wait_ready()
        live = requests.get(app.url + "/openapi.json", timeout=30).json()
        assert live == json.loads(json.dumps(DOCUMENT)), "the document fuzzed is not the live one"
        yield app
        app.stop()
        worker.stop()


@schemathesis.check
def no_server_error(ctx, response, case):
    """No 5xx, except the 504 a client asks for with options.timeout (the job was dropped unrun), and
    a readiness probe's 503 "unavailable" (the fuzzed admin endpoints may unload every model)."""
    if response.status_code < 500:
        return None
    if response.status_code == 503 and case.path in ("/health", "/health/ready") and \
            response.json().get("status") == "unavailable":
        return None
    try:
        kind = response.json()["error"]["type"]
    except Exception:  # noqa: BLE001 - not even the error shape
        kind = None
    if response.status_code == 504 and kind == "deadline_exceeded":
        return None
    raise AssertionError(f"server error {response.status_code} on {case.method} {case.path}: "
                         f"{response.text[:500]}")


def _cut(holder, key: str, most: float) -> None:
    """Cut a valid wait in a generated body to `most` seconds (an invalid one stays, to be refused)."""
    value = holder.get(key) if isinstance(holder, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_WAIT_S:
        holder[key] = min(value, most)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_the_api_keeps_to_its_document(case, fuzz_stack):
    """Generated requests, valid and not: never a 5xx, every status, header and body as documented,
    and what the document forbids is refused."""
    if isinstance(case.body, dict):
        _cut(case.body, "wait", MAX_ADMIN_WAIT_S)
        _cut(case.body.get("options"), "wait", MAX_PREDICT_WAIT_S)
    # Not positive_data_acceptance: a body the document allows may still be refused (422) for what
    # only the live service knows: the parameters of the named model's task, the names of live workers.
    case.call_and_validate(
        base_url=fuzz_stack.url,
        checks=[no_server_error, status_code_conformance, content_type_conformance,
                response_headers_conformance, response_schema_conformance, negative_data_rejection],
        timeout=60,
    )
