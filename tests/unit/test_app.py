"""The Flask app with a stub worker directory: status codes and the error shape."""

import json
import subprocess
import sys

from tests.helpers import CLOSED, assert_error, make_client, make_model


def test_malformed_json_is_400(model_dir):
    assert_error(make_client(model_dir).post("/predict", data=b"{nope", content_type="application/json"), 400,
                 "invalid_json")


def test_validation_is_422(model_dir):
    client = make_client(model_dir)
    assert_error(client.post("/predict", json={"model_id": "minilm", "inputs": []}), 422, "validation_error")
    assert_error(client.post("/jobs", json={"model_id": "minilm"}), 422, "validation_error")
    assert_error(client.post("/predict", json={"model_id": "minilm", "inputs": "x", "parameters": {"top_k": 2}}),
                 422, "validation_error")


def test_generation_over_the_budget_is_422_before_queueing(model_dir):
    """items x max_new_tokens x num_beams x num_return_sequences over the budget: 422, Redis never asked."""
    make_model(model_dir, "tiny-bart", arch="BartForConditionalGeneration")
    client = make_client(model_dir, max_generation_tokens_per_request=1000)
    body = {"model_id": "tiny-bart", "inputs": ["a", "b"],
            "parameters": {"max_new_tokens": 100, "num_beams": 3, "num_return_sequences": 2}}
    response = client.post("/predict", json=body)
    assert_error(response, 422, "over_budget")
    message = response.get_json()["error"]["message"]
    assert "2 items x 100 max_new_tokens x 3 num_beams x 2 num_return_sequences = 1200" in message
    assert "at most 1000 per request (MAX_GENERATION_TOKENS_PER_REQUEST)" in message
    within = dict(body, parameters={"max_new_tokens": 100, "num_beams": 5})  # 1000: accepted, so on to Redis
    assert client.post("/jobs", json=within).status_code == 503


def test_unknown_model_is_404(model_dir):
    assert_error(make_client(model_dir).post("/predict", json={"model_id": "ghost", "inputs": "x"}),
                 404, "model_not_found")


def test_body_too_large_is_413(model_dir):
    body = json.dumps({"model_id": "minilm", "inputs": "x" * 5000})
    assert_error(make_client(model_dir).post("/predict", data=body, content_type="application/json"), 413,
                 "payload_too_large")


def test_unknown_route_and_method_are_json(model_dir):
    client = make_client(model_dir)
    assert_error(client.get("/nowhere"), 404, "not_found")
    response = client.get("/predict")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_no_worker_is_503(model_dir):
    client = make_client(model_dir, workers=[])
    assert_error(client.post("/predict", json={"model_id": "minilm", "inputs": "x"}), 503, "no_workers")


def test_model_not_loaded_is_503_with_autoload_off(model_dir):
    client = make_client(model_dir, workers=[{"name": "w", "models": {"other": {}}}], autoload=False)
    assert_error(client.post("/predict", json={"model_id": "minilm", "inputs": "x"}), 503, "model_not_loaded")


def test_unreachable_redis_is_503_not_500(model_dir):
    """With the broker and result store down, requests get 503 with the reason."""
    client = make_client(model_dir)
    assert_error(client.post("/predict", json={"model_id": "minilm", "inputs": "x"}), 503, "broker_unavailable")
    assert_error(client.get("/jobs/abc"), 503, "broker_unavailable")
    health = client.get("/health")
    assert health.status_code == 503
    assert health.get_json()["status"] == "unavailable"
    assert "unreachable" in health.get_json()["message"]


def test_admin_endpoints_need_the_token(model_dir):
    """With ADMIN_TOKEN set, /models/* answer 401 without the bearer token, before doing anything."""
    client = make_client(model_dir, workers=[], admin_token="s3cret")
    for path in ("/models/load", "/models/unload", "/models/switch"):
        response = client.post(path, json={"model_id": "minilm", "source": "minilm"})
        assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = client.post(path, json={"model_id": "minilm"}, headers={"Authorization": "Bearer nope"})
        assert_error(wrong, 401, "unauthorized")
    ok = client.post("/models/load", json={"model_id": "minilm"}, headers={"Authorization": "Bearer s3cret"})
    assert_error(ok, 503, "no_workers")  # past the check: no worker is alive in this test


def test_admin_bodies_are_validated(model_dir):
    client = make_client(model_dir, workers=[])
    assert_error(client.post("/models/load", json={}), 422, "validation_error")
    assert_error(client.post("/models/load", json={"model_id": "minilm", "model_type": "image-to-text"}),
                 422, "validation_error")
    assert_error(client.post("/models/load", json={"model_id": "ghost"}), 404, "model_not_found")
    assert_error(client.post("/models/switch", json={"model_id": "minilm"}), 422, "validation_error")
    assert_error(client.post("/models/unload", json={"model_id": "minilm", "workers": "w"}), 422,
                 "validation_error")


def test_placement_bodies_are_checked_before_redis_is_asked(model_dir):
    """PUT /models/<id>/placement: bad bodies 422, unknown models 404, a text body 415; a good one reaches Redis."""
    client = make_client(model_dir, workers=[])
    assert_error(client.put("/models/minilm/placement", json={"replicas": -1}), 422, "validation_error")
    assert_error(client.put("/models/minilm/placement", json={"workers": ["a b"]}), 422, "validation_error")
    assert_error(client.put("/models/minilm/placement", json={}), 422, "validation_error")
    assert_error(client.put("/models/ghost/placement", json={"replicas": 1}), 404, "model_not_found")
    assert_error(client.put("/models/minilm/placement", data=b'{"replicas": 1}', content_type="text/plain"), 415,
                 "unsupported_media_type")
    assert_error(client.put("/models/minilm/placement", json={"replicas": 1}), 503, "broker_unavailable")
    unauthorized = make_client(model_dir, workers=[], admin_token="s3cret")
    assert_error(unauthorized.put("/models/minilm/placement", json={"replicas": 1}), 401, "unauthorized")
    assert_error(unauthorized.delete("/models/minilm/placement"), 401, "unauthorized")


def test_openapi_documents_every_endpoint(model_dir):
    doc = make_client(model_dir).get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    for path in ("/predict", "/jobs", "/jobs/{job_id}", "/models", "/models/load", "/models/unload",
                 "/models/switch", "/models/{model_id}/placement", "/workers", "/health", "/health/live",
                 "/health/ready", "/metrics"):
        assert path in doc["paths"], path


def test_swagger_ui_is_served_locally(model_dir):
    client = make_client(model_dir)
    page = client.get("/docs")
    assert page.status_code == 200 and b"swagger-ui-bundle.js" in page.data
    assert client.get("/docs/static/swagger-ui-bundle.js").status_code == 200


def test_webapp_never_imports_torch():
    """The API process stays light: no torch, no transformers."""
    code = ("import sys, webapp; webapp.create_app(); "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], env={"REDIS_URL": CLOSED, "PATH": ""}).returncode == 0


def test_bad_setting_stops_the_webapp_naming_the_variable():
    code = "import webapp; webapp.create_app()"
    out = subprocess.run([sys.executable, "-c", code], env={"MAX_BATCH_SIZE": "many", "PATH": ""},
                         capture_output=True, text=True)
    assert out.returncode == 2 and "MAX_BATCH_SIZE" in out.stderr


def test_every_answer_echoes_the_request_id(model_dir):
    """A valid X-Request-Id comes back on errors too (404, 415, 503); a bad or missing one is replaced."""
    client = make_client(model_dir)
    sent = {"X-Request-Id": "client id 7"}
    assert client.get("/nowhere", headers=sent).headers["X-Request-Id"] == "client id 7"
    assert client.post("/jobs", data=b"x", content_type="text/plain",
                       headers=sent).headers["X-Request-Id"] == "client id 7"
    assert client.post("/jobs", json={"model_id": "minilm", "inputs": "x"},
                       headers=sent).headers["X-Request-Id"] == "client id 7"
    for bad in ("x" * 129, "bad\x7fid"):
        made = client.get("/nowhere", headers={"X-Request-Id": bad}).headers["X-Request-Id"]
        assert made != bad and len(made) == 32
    assert len(client.get("/nowhere").headers["X-Request-Id"]) == 32
