"""Request validation: every malformed body is a 400 or a 422 naming the field."""

import jsonschema_rs
import pytest

from common.errors import BadRequest, InputTooLong, ValidationFailed
from common.settings import DEFAULT_WAIT_S, Settings
from webapp.schemas import parse_json, parse_predict, predict_body

S = Settings(max_input_chars=50, max_items_per_request=3)


def test_single_input():
    """A string input is one item and the answer will not be a list."""
    req = parse_predict({"model_id": "minilm", "inputs": "hi"}, S)
    assert (req.model_id, req.items, req.is_list) == ("minilm", ("hi",), False)
    assert (req.wait, req.use_cache, req.parameters) == (DEFAULT_WAIT_S, True, {})


def test_text_is_an_alias_of_inputs():
    """`text` works as `inputs` did in the original API."""
    req = parse_predict({"model_id": "minilm", "text": ["a", "b"]}, S)
    assert (req.items, req.is_list) == (("a", "b"), True)


def test_options():
    req = parse_predict({"model_id": "m", "inputs": "x", "options": {"wait": 0, "use_cache": False}}, S)
    assert (req.wait, req.use_cache) == (0.0, False)


INVALID = [
    ([], None),
    ({"inputs": "x"}, "model_id"),
    ({"model_id": "m"}, "inputs"),
    ({"model_id": "m", "inputs": []}, "inputs"),
    ({"model_id": "m", "inputs": ""}, "inputs"),
    ({"model_id": "m", "inputs": "   "}, "inputs"),
    ({"model_id": "m", "inputs": 3}, "inputs"),
    ({"model_id": "m", "inputs": ["a", 3]}, "inputs[1]"),
    ({"model_id": "m", "inputs": ["a", "b", "c", "d"]}, "inputs"),
    ({"model_id": "m", "inputs": "x", "text": "y"}, "inputs"),
    ({"model_id": "../m", "inputs": "x"}, "model_id"),
    ({"model_id": "m\n", "inputs": "x"}, "model_id"),
    ({"model_id": 5, "inputs": "x"}, "model_id"),
    ({"model_id": "m", "inputs": "x", "extra": 1}, "extra"),
    ({"model_id": "m", "inputs": "x", "parameters": [1]}, "parameters"),
    ({"model_id": "m", "inputs": "x", "options": {"wait": 301}}, "options.wait"),
    ({"model_id": "m", "inputs": "x", "options": {"wait": True}}, "options.wait"),
    ({"model_id": "m", "inputs": "x", "options": {"use_cache": "no"}}, "options.use_cache"),
    ({"model_id": "m", "inputs": "x", "options": {"priority": 1}}, "options.priority"),
]


@pytest.mark.parametrize("body, field", INVALID)
def test_invalid_bodies_are_422(body, field):
    """Each malformed body fails validation, naming the offending field."""
    with pytest.raises(ValidationFailed) as info:
        parse_predict(body, S)
    assert info.value.status_code == 422
    assert info.value.details.get("field") == field


def test_too_long_input():
    """An item over MAX_INPUT_CHARS is input_too_long (422)."""
    with pytest.raises(InputTooLong) as info:
        parse_predict({"model_id": "m", "inputs": ["ok", "x" * 51]}, S)
    assert info.value.to_dict()["error"]["type"] == "input_too_long"
    assert "MAX_INPUT_CHARS" in info.value.message


@pytest.mark.parametrize("raw", [b"", b"   ", b"{", b"{'a': 1}", b"\xff\xfe"])
def test_malformed_json_is_400(raw):
    with pytest.raises(BadRequest) as info:
        parse_json(raw)
    assert info.value.status_code == 400


AGREEMENT_BODIES = [
    {"model_id": "m", "inputs": "x"}, {"model_id": "m", "text": ["a", "b"]},
    {"model_id": "m", "inputs": {"question": "q", "context": "c"}, "parameters": {"top_k": 2}},
    {"model_id": "m", "inputs": "x", "options": {"wait": 0, "use_cache": False, "timeout": 5}},
    {"model_id": "m", "inputs": "x", "options": None, "parameters": None},
    {"model_id": "m"}, {"model_id": "m", "inputs": None}, {"model_id": "m", "inputs": "x", "text": "y"},
    {"model_id": "m", "inputs": ["a", None]}, {"model_id": "m", "inputs": "\x1c"}, {"model_id": None, "inputs": "x"},
    {"model_id": "m", "inputs": "x", "options": {"timeout": 0}}, {"model_id": "m", "inputs": "x", "options": 3},
    {"model_id": "m", "inputs": "x", "options": {"wait": 1.5e3}}, {"model_id": "m", "inputs": True},
]


@pytest.mark.parametrize("body", AGREEMENT_BODIES + [b for b, _ in INVALID])
def test_the_documented_schema_and_the_validation_agree(body):
    """The JSON Schema the OpenAPI document carries accepts exactly the bodies the validation accepts."""
    schema = predict_body(S.max_items_per_request, S.max_input_chars).model_json_schema()
    try:
        parse_predict(body, S)
        accepted = True
    except ValidationFailed:
        accepted = False
    assert jsonschema_rs.is_valid(schema, body) is accepted
