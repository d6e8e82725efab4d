"""POST /predict through the real webapp, broker and worker."""

import json

import pytest

from tests.helpers import close

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Celery workers pool concurrent requests into batches.",
    "A list of inputs comes back as a list of vectors, in order.",
]


@pytest.fixture(scope="session")
def reference(model_dir):
    """Mean pooling over minilm's last hidden state, computed in this process."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir / "minilm")
    model = AutoModel.from_pretrained(model_dir / "minilm").eval()

    def embed(texts):
        enc = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return ((hidden * mask).sum(1) / mask.sum(1)).tolist()

    return embed


def test_health_is_ok(api):
    body = api.get("/health").json()
    assert body["status"] == "ok" and body["message"] == "API and Models are ready."
    assert "minilm" in body["models"]


def test_single_input_is_the_mean_pooled_embedding(api, reference):
    """The answer is the vector mean pooling over the last hidden state gives in-process."""
    response = api.post("/predict", json={"model_id": "minilm", "inputs": SENTENCES[0],
                                          "options": {"use_cache": False}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "succeeded" and body["model_id"] == "minilm" and body["cached"] is False
    assert len(body["result"]) == 384
    assert close(body["result"], reference([SENTENCES[0]])[0])
    assert body["timings"]["inference_ms"] > 0 and body["timings"]["total_ms"] >= body["timings"]["inference_ms"]


def test_list_of_inputs_is_a_list_of_vectors_in_order(api, reference):
    body = api.post("/predict", json={"model_id": "minilm", "inputs": SENTENCES}).json()
    expected = reference(SENTENCES)
    assert len(body["result"]) == 3
    for got, want in zip(body["result"], expected):
        assert close(got, want)


def test_text_is_an_alias_of_inputs(api, reference):
    body = api.post("/predict", json={"model_id": "minilm", "text": SENTENCES[1]}).json()
    assert close(body["result"], reference([SENTENCES[1]])[0])


def test_normalize_and_token_vectors(api):
    unit = api.post("/predict", json={"model_id": "minilm", "inputs": "hello there",
                                      "parameters": {"normalize": True}}).json()["result"]
    assert abs(sum(x * x for x in unit) - 1.0) < 1e-4
    tokens = api.post("/predict", json={"model_id": "minilm", "inputs": "hello there",
                                        "parameters": {"pooling": "none"}}).json()["result"]
    assert len(tokens) == 4 and all(len(t) == 384 for t in tokens)  # [CLS] hello there [SEP]


def test_job_failure_gets_the_errors_status(api):
    """An input over the model's length with truncate off fails its job with a 422."""
    response = api.post("/predict", json={"model_id": "minilm", "inputs": "word " * 400,
                                          "parameters": {"truncate": False}})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "input_too_long" and "256" in error["message"]
    job = api.get(f"/jobs/{error['job_id']}").json()
    assert job["status"] == "failed" and job["error"]["type"] == "input_too_long"


@pytest.mark.parametrize("body, status, type_", [
    (b"{not json", 400, "invalid_json"),
    (json.dumps({"model_id": "minilm"}).encode(), 422, "validation_error"),
    (json.dumps({"model_id": "minilm", "inputs": ["ok", ""]}).encode(), 422, "validation_error"),
    (json.dumps({"model_id": "minilm", "inputs": "x", "parameters": {"top_k": 1}}).encode(), 422,
     "validation_error"),
    (json.dumps({"model_id": "minilm", "inputs": "x" * 20_001}).encode(), 422, "input_too_long"),
    (json.dumps({"model_id": "minilm", "inputs": ["x"] * 257}).encode(), 422, "validation_error"),
    (json.dumps({"model_id": "nobody", "inputs": "x"}).encode(), 404, "model_not_found"),
    (json.dumps({"model_id": "minilm", "inputs": "x" * 5_000_000}).encode(), 413, "payload_too_large"),
])
def test_bad_requests_get_a_clear_4xx(api, body, status, type_):
    response = api.post("/predict", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"]["type"] == type_


def test_bad_requests_break_nothing(api, reference):
    """After a burst of bad input the service still answers correctly."""
    for body in (b"{", b"[]", b'{"model_id": "minilm", "inputs": 5}'):
        api.post("/predict", data=body, headers={"Content-Type": "application/json"})
    body = api.post("/predict", json={"model_id": "minilm", "inputs": SENTENCES[2]}).json()
    assert close(body["result"], reference([SENTENCES[2]])[0])


def test_models_and_workers(api, worker):
    models = {m["model_id"]: m for m in api.get("/models").json()["models"]}
    assert models["minilm"]["task"] == "feature-extraction"
    assert worker.name in models["minilm"]["loaded_on"]
    assert models["minilm-b"]["loaded_on"] == []
    workers = {w["name"]: w for w in api.get("/workers").json()}
    assert workers[worker.name]["device"] == "cpu"
    assert workers[worker.name]["queues"] == ["infer.minilm"]


def test_metrics_expose_requests_and_batches(api):
    api.post("/predict", json={"model_id": "minilm", "inputs": "count me"})
    text = api.get("/metrics").text
    assert 'atf_http_requests_total{method="POST",route="/predict",status="200"}' in text
    assert 'atf_batches_total{model_id="minilm"}' in text
    assert 'atf_batch_size_bucket{le="1",model_id="minilm"}' in text
