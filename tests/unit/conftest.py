"""Unit fixtures: a model directory with one fake model, for the Flask app's tests."""

import pytest

from tests.helpers import make_model


@pytest.fixture
def model_dir(tmp_path):
    make_model(tmp_path, "minilm")
    return tmp_path
