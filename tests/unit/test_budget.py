"""The generation budget: items x max_new_tokens x num_beams x num_return_sequences, per request."""

import pytest

from common.budget import check_generation_budget, generation_tokens, items_within_generation_budget
from common.errors import OverBudget
from common.params import validate_parameters
from common.settings import Settings
from model_store.store import ModelInfo, default_parameters


def test_the_work_of_a_request_is_the_product_of_its_factors():
    params = validate_parameters("text2text-generation", {"max_new_tokens": 256, "num_beams": 8,
                                                          "num_return_sequences": 8}, max_new_tokens=256)
    assert generation_tokens("text2text-generation", params, 256) == 256 * 256 * 8 * 8
    assert generation_tokens("text-generation", {"max_new_tokens": 10}, 3) == 30
    assert generation_tokens("feature-extraction", {"pooling": "none"}, 256) == 0


def test_the_measured_82_second_request_is_refused_with_the_budget_and_its_factors():
    """256 items x 256 tokens x 8 beams x 8 sequences is far over the default budget: 422 saying why."""
    budget = Settings().max_generation_tokens_per_request
    params = {"max_new_tokens": 256, "num_beams": 8, "num_return_sequences": 8}
    with pytest.raises(OverBudget) as caught:
        check_generation_budget("text2text-generation", params, 256, budget)
    error = caught.value
    assert error.status_code == 422 and error.type == "over_budget"
    assert "256 items x 256 max_new_tokens x 8 num_beams x 8 num_return_sequences = 4194304" in error.message
    assert f"at most {budget} per request (MAX_GENERATION_TOKENS_PER_REQUEST)" in error.message
    assert error.details["budget"] == budget and error.details["requested"] == 4194304


def test_a_request_exactly_at_the_budget_passes_and_one_more_item_does_not():
    params = {"max_new_tokens": 128}
    check_generation_budget("summarization", params, 8, 1024)
    with pytest.raises(OverBudget):
        check_generation_budget("summarization", params, 9, 1024)
    check_generation_budget("fill-mask", {"top_k": 100}, 10_000, 1)  # not a generation task: not counted here


def test_beams_the_model_declares_count_when_the_request_names_none(tmp_path):
    """generate() uses the model's own num_beams when the request has none: the budget counts them."""
    info = ModelInfo("m", tmp_path, "summarization", num_beams=4)
    defaults = default_parameters(info, "summarization")
    params = validate_parameters("summarization", {"max_new_tokens": 10}, defaults, max_new_tokens=256)
    assert params["num_beams"] == 4
    assert generation_tokens("summarization", params, 2, defaults) == 80
    # text-generation takes no num_beams parameter, but the model's still applies
    gen_defaults = default_parameters(info, "text-generation")
    gen_params = validate_parameters("text-generation", {"max_new_tokens": 10}, gen_defaults, max_new_tokens=256)
    assert generation_tokens("text-generation", gen_params, 2, gen_defaults) == 80


def test_a_batch_holds_no_more_items_than_the_budget_allows():
    params = {"max_new_tokens": 100, "num_beams": 2, "num_return_sequences": 1}
    assert items_within_generation_budget("text2text-generation", params, 1000) == 5
    assert items_within_generation_budget("text2text-generation", params, 10) == 1  # at least one
    assert items_within_generation_budget("feature-extraction", {}, 10) is None


def test_the_budget_is_a_setting_read_from_the_environment():
    assert Settings.from_env({"MAX_GENERATION_TOKENS_PER_REQUEST": "1000"}).max_generation_tokens_per_request == 1000
