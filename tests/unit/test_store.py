"""The model store: listing, task inference, strict id resolution."""

import json

import pytest

from common.errors import ModelNotFound, ValidationFailed
from model_store.store import ModelStore, task_from_config
from tests.helpers import make_model


def test_list_reports_incomplete_models_with_a_reason(tmp_path):
    make_model(tmp_path, "good")
    make_model(tmp_path, "noweights", weights=False)
    (tmp_path / "empty").mkdir()
    infos = {i.model_id: i for i in ModelStore(tmp_path).list()}
    assert infos["good"].complete and infos["good"].task == "feature-extraction"
    assert not infos["noweights"].complete and "weights" in infos["noweights"].problem
    assert not infos["empty"].complete and "config.json" in infos["empty"].problem


def test_declared_pooling(tmp_path):
    make_model(tmp_path, "clsmodel", pooling="cls_token")
    assert ModelStore(tmp_path).describe("clsmodel").pooling == "cls"


@pytest.mark.parametrize("arch, task", [
    ("BertForSequenceClassification", "text-classification"),
    ("BertForTokenClassification", "token-classification"),
    ("GPT2LMHeadModel", "text-generation"),
    ("T5ForConditionalGeneration", "text2text-generation"),
    ("BertModel", "feature-extraction"),
])
def test_task_from_architecture(arch, task):
    assert task_from_config({"architectures": [arch]}) == task


def test_ids_resolve_strictly_inside_the_store(tmp_path):
    store = ModelStore(tmp_path / "store")
    make_model(tmp_path, "outside")
    with pytest.raises(ValidationFailed):
        store.path_for("../outside")
    with pytest.raises(ModelNotFound):
        store.path_for("outside")


def test_fingerprint_changes_with_the_weights(tmp_path):
    d = make_model(tmp_path, "m")
    store = ModelStore(tmp_path)
    before = store.describe("m").fingerprint
    (d / "model.safetensors").write_bytes(b"\1" * 17)
    assert store.describe("m").fingerprint != before


def test_nli_and_task_specific_configs():
    assert task_from_config({"architectures": ["BertForSequenceClassification"],
                             "id2label": {"0": "ENTAILMENT", "1": "CONTRADICTION"}}) == "zero-shot-classification"
    assert task_from_config({"architectures": ["BartForConditionalGeneration"],
                             "task_specific_params": {"summarization": {}}}) == "summarization"
    assert task_from_config({"architectures": ["T5ForConditionalGeneration"],
                             "task_specific_params": {"translation_en_to_de": {}, "translation_en_to_fr": {}}}) \
        == "translation"
    assert task_from_config({"architectures": ["T5ForConditionalGeneration"],
                             "task_specific_params": {"summarization": {}, "translation_en_to_de": {}}}) \
        == "text2text-generation"


def test_a_symlinked_model_is_served_from_its_target(tmp_path):
    """A Hugging Face cache snapshot (or any folder) linked into the store."""
    real = make_model(tmp_path / "elsewhere", "snapshot")
    store = tmp_path / "store"
    store.mkdir()
    (store / "linked").symlink_to(real, target_is_directory=True)
    info = ModelStore(store).describe("linked")
    assert info.complete and info.task == "feature-extraction"


def test_declared_num_beams_from_the_generation_config(tmp_path):
    """The beams generate() uses by default: generation_config.json's, else config.json's, else 1."""
    make_model(tmp_path, "plain", arch="BartForConditionalGeneration")
    cnn = make_model(tmp_path, "cnn", arch="BartForConditionalGeneration")
    (cnn / "generation_config.json").write_text(json.dumps({"num_beams": 4, "max_length": 142}))
    legacy = make_model(tmp_path, "legacy", arch="BartForConditionalGeneration")
    (legacy / "config.json").write_text(json.dumps({"architectures": ["BartForConditionalGeneration"],
                                                     "num_beams": 3}))
    store = ModelStore(tmp_path)
    assert [store.describe(m).num_beams for m in ("plain", "cnn", "legacy")] == [1, 4, 3]
