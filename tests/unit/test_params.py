"""Task parameters are checked before queueing, with defaults filled in."""

import pytest

from common.errors import ValidationFailed
from common.params import normalize_task, validate_parameters


def test_defaults_and_model_defaults():
    """Missing parameters take the model's default, then the task's."""
    out = validate_parameters("feature-extraction", {}, {"pooling": "cls"})
    assert out == {"pooling": "cls", "normalize": False, "truncate": True}


def test_given_values_win():
    out = validate_parameters("feature-extraction", {"pooling": "none", "normalize": True}, {"pooling": "mean"})
    assert out["pooling"] == "none" and out["normalize"] is True


@pytest.mark.parametrize("params, name", [
    ({"top_k": 3}, "parameters.top_k"),
    ({"pooling": "median"}, "parameters.pooling"),
    ({"normalize": "yes"}, "parameters.normalize"),
    ({"truncate": 1}, "parameters.truncate"),
])
def test_bad_parameters_are_named(params, name):
    with pytest.raises(ValidationFailed) as info:
        validate_parameters("feature-extraction", params)
    assert info.value.details["field"] == name


@pytest.mark.parametrize("given, task", [
    ("feature-extraction", "feature-extraction"),
    ("feature_extraction", "feature-extraction"),
    ("FEATURE_EXTRACTION", "feature-extraction"),
    (None, None),
])
def test_model_type_accepts_task_names_and_underscore_forms(given, task):
    assert normalize_task(given) == task


def test_unknown_model_type():
    with pytest.raises(ValidationFailed, match="model_type"):
        normalize_task("image_segmentation")


def test_unknown_task():
    with pytest.raises(ValidationFailed, match="not served"):
        validate_parameters("image-segmentation", {})


@pytest.mark.parametrize("task, item, field", [
    ("question-answering", "a string", "inputs"),
    ("question-answering", {"question": "q"}, "inputs"),
    ("question-answering", {"question": "q", "context": ""}, "inputs.context"),
    ("question-answering", {"question": 1, "context": "c"}, "inputs.question"),
    ("fill-mask", "no mask here", "inputs"),
    ("text-classification", {"question": "q", "context": "c"}, "inputs"),
    ("text-generation", "", "inputs"),
])
def test_items_of_the_wrong_kind_are_named(task, item, field):
    from common.params import validate_item

    with pytest.raises(ValidationFailed) as info:
        validate_item(task, item, "inputs", max_chars=100, mask_token="[MASK]")
    assert info.value.details["field"] == field


def test_max_new_tokens_is_bounded_by_the_setting():
    ok = validate_parameters("text-generation", {"max_new_tokens": 64}, max_new_tokens=64)
    assert ok["max_new_tokens"] == 64
    with pytest.raises(ValidationFailed, match="at most 64"):
        validate_parameters("text-generation", {"max_new_tokens": 65}, max_new_tokens=64)
    assert validate_parameters("text-generation", {}, max_new_tokens=8)["max_new_tokens"] == 8


def test_zero_shot_needs_labels_and_takes_them_comma_separated():
    out = validate_parameters("zero-shot-classification", {"candidate_labels": "a, b"})
    assert out["candidate_labels"] == ["a", "b"]
    with pytest.raises(ValidationFailed, match="required"):
        validate_parameters("zero-shot-classification", {})
