"""Per-request budgets: the products that make a request's work (common/budget.py)."""

import pytest

from common.budget import check_encoded_budget, check_request_budget, generation_tokens, items_per_batch
from common.errors import OverBudget
from common.params import validate_parameters
from common.settings import Settings
from model_store.store import ModelInfo, default_parameters

HUGE = {"max_new_tokens": 256, "num_beams": 8, "num_return_sequences": 8}


def test_the_work_of_a_generation_request_is_the_product_of_its_factors():
    params = validate_parameters("text2text-generation", HUGE, max_new_tokens=256)
    assert generation_tokens("text2text-generation", params, 256) == 256 * 256 * 8 * 8
    assert generation_tokens("text-generation", {"max_new_tokens": 10}, 3) == 30
    assert generation_tokens("feature-extraction", {"pooling": "none"}, 256) == 0


def test_the_measured_82_second_request_is_refused_with_the_budget_and_its_factors():
    """256 items x 256 tokens x 8 beams x 8 sequences is far over the default budget: 422 saying why."""
    settings = Settings()
    budget = settings.max_generation_tokens_per_request
    with pytest.raises(OverBudget) as caught:
        check_request_budget("text2text-generation", HUGE, ["x"] * 256, settings)
    error = caught.value
    assert error.status_code == 422 and error.type == "over_budget"
    assert "256 items x 256 max_new_tokens x 8 num_beams x 8 num_return_sequences = 4194304" in error.message
    assert f"at most {budget} per request (MAX_GENERATION_TOKENS_PER_REQUEST)" in error.message
    assert error.details["budget"] == budget and error.details["requested"] == 4194304


def test_a_request_exactly_at_the_budget_passes_and_one_more_item_does_not():
    settings = Settings(max_generation_tokens_per_request=1024)
    check_request_budget("summarization", {"max_new_tokens": 128}, ["x"] * 8, settings)
    with pytest.raises(OverBudget):
        check_request_budget("summarization", {"max_new_tokens": 128}, ["x"] * 9, settings)


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


def test_zero_shot_pairs_are_items_times_labels():
    settings = Settings(max_zero_shot_pairs_per_request=100)
    params = {"candidate_labels": [f"label {i}" for i in range(10)]}
    check_request_budget("zero-shot-classification", params, ["x"] * 10, settings)
    with pytest.raises(OverBudget, match=r"11 items x 10 candidate_labels = 110 pairs.*"
                                         r"at most 100 per request \(MAX_ZERO_SHOT_PAIRS_PER_REQUEST\)"):
        check_request_budget("zero-shot-classification", params, ["x"] * 11, settings)


def test_fill_mask_predictions_are_masks_times_top_k():
    settings = Settings(max_fill_mask_predictions_per_request=100)
    check_request_budget("fill-mask", {"top_k": 10}, ["a [MASK] b [MASK]"] * 5, settings, mask_token="[MASK]")
    with pytest.raises(OverBudget, match=r"11 \[MASK\] tokens \(in 6 items\) x 10 top_k = 110 predictions"):
        check_request_budget("fill-mask", {"top_k": 10}, ["a [MASK] b [MASK]"] * 5 + ["[MASK]"], settings,
                             mask_token="[MASK]")


def test_token_vectors_are_counted_in_tokens_once_encoded():
    """pooling none returns a vector per token: the worker counts them after tokenizing."""
    settings = Settings(max_token_vectors_per_request=1000)
    check_encoded_budget("feature-extraction", {"pooling": "none"}, [500, 500], settings)
    check_encoded_budget("feature-extraction", {"pooling": "mean"}, [500] * 256, settings)  # one vector each
    with pytest.raises(OverBudget, match=r"return 1001 token vectors \(pooling none, 3 items of up to 500 tokens\)"
                                         r".*\(MAX_TOKEN_VECTORS_PER_REQUEST\)"):
        check_encoded_budget("feature-extraction", {"pooling": "none"}, [500, 500, 1], settings)


def test_other_tasks_have_no_product_to_bound():
    settings = Settings(max_generation_tokens_per_request=1, max_zero_shot_pairs_per_request=1,
                        max_fill_mask_predictions_per_request=1)
    check_request_budget("feature-extraction", {"pooling": "mean"}, ["x"] * 256, settings)
    check_request_budget("text-classification", {"top_k": 2}, ["x"] * 256, settings)


def test_a_batch_holds_no_more_items_than_one_request_may_have():
    settings = Settings(max_generation_tokens_per_request=1000, max_zero_shot_pairs_per_request=30)
    params = {"max_new_tokens": 100, "num_beams": 2, "num_return_sequences": 1}
    assert items_per_batch("text2text-generation", params, settings) == 5
    assert items_per_batch("text2text-generation", {"max_new_tokens": 5000}, settings) == 1  # at least one
    assert items_per_batch("zero-shot-classification", {"candidate_labels": ["a", "b", "c", "d"]}, settings) == 7
    assert items_per_batch("feature-extraction", {}, settings) is None
    assert items_per_batch("fill-mask", {"top_k": 5}, settings) is None


def test_the_budgets_are_settings_read_from_the_environment():
    settings = Settings.from_env({"MAX_GENERATION_TOKENS_PER_REQUEST": "1000", "MAX_ZERO_SHOT_PAIRS_PER_REQUEST": "7",
                                  "MAX_FILL_MASK_PREDICTIONS_PER_REQUEST": "9", "MAX_TOKEN_VECTORS_PER_REQUEST": "11"})
    assert (settings.max_generation_tokens_per_request, settings.max_zero_shot_pairs_per_request,
            settings.max_fill_mask_predictions_per_request, settings.max_token_vectors_per_request) == (1000, 7, 9, 11)
