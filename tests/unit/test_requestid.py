"""The checks a request id and a traceparent pass before they are carried and logged."""

import pytest

from common.requestid import MAX_REQUEST_ID_CHARS, new_request_id, valid_request_id, valid_traceparent


@pytest.mark.parametrize("value", ["a", "req-1", "with inner space", "x" * MAX_REQUEST_ID_CHARS, "~!{}"])
def test_printable_request_ids_are_kept(value):
    assert valid_request_id(value) == value


@pytest.mark.parametrize("value", ["", " lead", "trail ", "x" * (MAX_REQUEST_ID_CHARS + 1), "tab\there",
                                   "new\nline", "caf\u00e9", "nul\x00", None, 42])
def test_other_request_ids_are_refused(value):
    assert valid_request_id(value) is None


def test_generated_ids_pass_the_check():
    first, second = new_request_id(), new_request_id()
    assert first != second and valid_request_id(first) == first and len(first) == 32


@pytest.mark.parametrize("value", [
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
])
def test_well_formed_traceparents_are_kept(value):
    assert valid_traceparent(value) == value


@pytest.mark.parametrize("value", [
    "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # unknown version
    "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # uppercase
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero parent id
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
    "", None,
])
def test_malformed_traceparents_are_dropped(value):
    assert valid_traceparent(value) is None
