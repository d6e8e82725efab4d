"""Every task family end to end through HTTP, with the demo models, batched across jobs."""

import concurrent.futures as futures
import re

import pytest

from model_store.training import load_examples
from tests.helpers import Worker, batch_stats, long_texts, service_env, wait_for_status

TASK_MODELS = ("sentiment_model", "tiny-ner", "tiny-qa", "tiny-fill-mask", "tiny-zero-shot", "tiny-gpt2",
               "tiny-bart", "tiny-summarization", "tiny-translation")
QA = [{"question": "Where does John live?", "context": "John lives in Paris with his two cats."},
      {"question": "What did Mary buy?", "context": "Yesterday Mary bought a red bicycle in town."}]


@pytest.fixture(scope="module")
def tasks_worker(redis_url, model_dir, log_dir):
    """One worker serving a model of every task family."""
    env = service_env(redis_url, model_dir, preload_models=",".join(TASK_MODELS),
                      max_models_per_worker=len(TASK_MODELS))
    w = Worker("tasks", env, log_dir).wait_ready(timeout=240)
    yield w
    w.stop()


def predict(api, model_id, inputs, **parameters):
    response = api.post("/predict", json={"model_id": model_id, "inputs": inputs, "parameters": parameters})
    assert response.status_code == 200, response.text
    return response.json()["result"]


def test_sentiment_readme_example_is_positive(api, tasks_worker):
    result = predict(api, "sentiment_model", "I absolutely love this new feature; it's a huge time-saver!", top_k=2)
    assert [r["label"] for r in result] == ["POSITIVE", "NEGATIVE"] and result[0]["score"] > 0.9


def test_sentiment_held_out_accuracy_is_at_least_90_percent(api, tasks_worker, model_dir):
    """The held-out sentences (never trained on), through the service: >= 90% right."""
    log = (model_dir.parent / "build-demo.log").read_text()
    printed = float(re.search(r"held-out sentences: held-out accuracy ([\d.]+)%", log).group(1))
    _, held_out = load_examples()
    labels = [r["label"] for r in predict(api, "sentiment_model", [t for t, _ in held_out])]
    accuracy = sum(label == ("NEGATIVE", "POSITIVE")[y] for label, (_, y) in zip(labels, held_out)) / len(held_out)
    assert len(held_out) >= 50 and accuracy >= 0.9 and abs(accuracy * 100 - printed) < 0.1


def test_text_classification(api, tasks_worker):
    best = predict(api, "sentiment_model", ["Great!", "Terrible."])
    assert [set(r) for r in best] == [{"label", "score"}] * 2
    assert [r["label"] for r in best] == ["POSITIVE", "NEGATIVE"]


def test_token_classification(api, tasks_worker):
    raw = predict(api, "tiny-ner", ["John lives in Paris", "Mary"])
    assert len(raw) == 2 and all(isinstance(r, list) for r in raw)
    assert set(raw[0][0]) == {"entity", "score", "index", "word", "start", "end"}
    grouped = predict(api, "tiny-ner", "John lives in Paris", aggregation_strategy="simple")
    assert set(grouped[0]) == {"entity_group", "score", "word", "start", "end"}


def test_question_answering(api, tasks_worker):
    answers = predict(api, "tiny-qa", QA)
    for item, answer in zip(QA, answers):
        assert set(answer) == {"score", "start", "end", "answer"}
        assert item["context"][answer["start"]:answer["end"]] == answer["answer"] != ""
    top = predict(api, "tiny-qa", QA[0], top_k=3)
    assert len(top) == 3 and top[0]["score"] >= top[1]["score"] >= top[2]["score"]


def test_fill_mask(api, tasks_worker):
    result = predict(api, "tiny-fill-mask", ["Paris is the [MASK] of France.", "I [MASK] you."], top_k=3)
    assert len(result) == 2 and all(len(r) == 3 for r in result)
    assert set(result[0][0]) == {"score", "token", "token_str", "sequence"}
    single = predict(api, "tiny-fill-mask", "Paris is the [MASK] of France.", top_k=2)
    assert len(single) == 2 and "sequence" in single[0]


def test_zero_shot_classification(api, tasks_worker):
    labels = ["sports", "politics", "cooking"]
    result = predict(api, "tiny-zero-shot", ["The match ended in a draw.", "Add salt."], candidate_labels=labels)
    for text, r in zip(["The match ended in a draw.", "Add salt."], result):
        assert r["sequence"] == text and sorted(r["labels"]) == sorted(labels)
        assert abs(sum(r["scores"]) - 1) < 1e-4


def test_text_generation(api, tasks_worker):
    result = predict(api, "tiny-gpt2", ["Once upon a time", "The value of"], max_new_tokens=5)
    assert [len(r) for r in result] == [1, 1]
    assert result[0][0]["generated_text"].startswith("Once upon a time")
    tail = predict(api, "tiny-gpt2", "Once upon a time", max_new_tokens=5, return_full_text=False)
    assert not tail[0]["generated_text"].startswith("Once upon a time")


@pytest.mark.parametrize("model_id, key", [("tiny-bart", "generated_text"), ("tiny-summarization", "summary_text"),
                                           ("tiny-translation", "translation_text")])
def test_sequence_to_sequence(api, tasks_worker, model_id, key):
    result = predict(api, model_id, ["A first input.", "A second one."], max_new_tokens=6)
    assert [list(r[0]) for r in result] == [[key], [key]]
    two = predict(api, model_id, "Beams.", max_new_tokens=6, num_beams=2, num_return_sequences=2)
    assert len(two) == 2 and all(key in r for r in two)


FAMILY_INPUTS = {  # (input of job i, parameters): distinct inputs, or they would share one pass
    "sentiment_model": (lambda i: f"a fine sentence number {i}", {}),
    "tiny-ner": (lambda i: f"John number {i} lives in Paris", {}),
    "tiny-qa": (lambda i: {"question": f"Where is number {i}?", "context": QA[0]["context"]}, {}),
    "tiny-fill-mask": (lambda i: f"Paris is the [MASK] of France, number {i}.", {}),
    "tiny-zero-shot": (lambda i: f"Sentence number {i}.", {"candidate_labels": ["a", "b"]}),
    "tiny-gpt2": (lambda i: f"Once upon a time {i}", {"max_new_tokens": 4}),
    "tiny-bart": (lambda i: f"Some input {i}.", {"max_new_tokens": 4}),
    "tiny-summarization": (lambda i: f"Some input {i}.", {"max_new_tokens": 4}),
    "tiny-translation": (lambda i: f"Some input {i}.", {"max_new_tokens": 4}),
}


@pytest.mark.parametrize("model_id", TASK_MODELS)
def test_jobs_of_every_family_share_batches(api, tasks_worker, rdb, model_id):
    """Jobs that pile up while the worker is busy run in fewer forward passes than jobs."""
    make_item, parameters = FAMILY_INPUTS[model_id]
    before = batch_stats(rdb, model_id)
    if model_id == "sentiment_model":  # occupy the device with another model than the one measured
        blocking = {"model_id": "tiny-gpt2", "inputs": long_texts(16, 20), "parameters": {"max_new_tokens": 64}}
    else:
        blocking = {"model_id": "sentiment_model", "inputs": long_texts(48)}
    blocker = api.post("/jobs", json={**blocking, "options": {"use_cache": False}})
    with futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: api.post("/jobs", json={
            "model_id": model_id, "inputs": make_item(i), "parameters": parameters,
            "options": {"use_cache": False}}).json()["job_id"], range(8)))
    assert all(wait_for_status(api, i, {"succeeded"})["status"] == "succeeded" for i in ids)
    wait_for_status(api, blocker.json()["job_id"], {"succeeded"})
    after = batch_stats(rdb, model_id)
    passes = after["batches"] - before.get("batches", 0)
    items = after["items"] - before.get("items", 0)
    assert items >= 8 and passes < 8


@pytest.mark.parametrize("model_id, inputs, parameters, field", [
    ("tiny-ner", "x", {"top_k": 2}, "parameters.top_k"),
    ("tiny-ner", "x", {"aggregation_strategy": 5}, "parameters.aggregation_strategy"),
    ("tiny-gpt2", "x", {"max_new_tokens": 100_000}, "parameters.max_new_tokens"),
    ("tiny-gpt2", "x", {"temperature": 0}, "parameters.temperature"),
    ("tiny-gpt2", "x", {"num_return_sequences": 2}, "parameters.num_return_sequences"),
    ("tiny-zero-shot", "x", {}, "parameters.candidate_labels"),
    ("tiny-zero-shot", "x", {"candidate_labels": []}, "parameters.candidate_labels"),
    ("tiny-zero-shot", "x", {"candidate_labels": ["a"], "hypothesis_template": "no slot"},
     "parameters.hypothesis_template"),
    ("tiny-qa", "just a string", {}, "inputs"),
    ("tiny-qa", [{"question": "q"}], {}, "inputs[0]"),
    ("tiny-fill-mask", "nothing to fill", {}, "inputs"),
    ("sentiment_model", {"question": "q", "context": "c"}, {}, "inputs"),
    ("tiny-bart", "x", {"num_beams": 9}, "parameters.num_beams"),
])
def test_bad_parameters_and_inputs_are_422_naming_them(api, tasks_worker, model_id, inputs, parameters, field):
    response = api.post("/predict", json={"model_id": model_id, "inputs": inputs, "parameters": parameters})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field
