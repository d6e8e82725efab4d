"""One error hierarchy: status codes, types, and round trips through stored results."""

from common.errors import (
    ERRORS_BY_NAME,
    InferenceFailed,
    InputTooLong,
    ModelNotLoaded,
    error_from_stored,
)


def test_every_error_has_a_status_a_type_and_a_docstring():
    for name, cls in ERRORS_BY_NAME.items():
        assert 400 <= cls.status_code < 600, name
        assert cls.type and cls.type == cls.type.lower(), name
        assert cls.__doc__ and cls.__doc__.startswith("Raised when"), name


def test_stored_error_comes_back_as_its_class():
    """A worker stores the class name; the webapp rebuilds the same error."""
    error = error_from_stored("InputTooLong", "too long")
    assert isinstance(error, InputTooLong)
    assert error.to_dict() == {"error": {"type": "input_too_long", "message": "too long"}}
    assert error_from_stored("ModelNotLoaded", "x").status_code == ModelNotLoaded.status_code


def test_unknown_stored_error_carries_no_exception_text():
    """A failure stored by a foreign worker is a 424; its Python exception text is not passed on."""
    error = error_from_stored("ZeroDivisionError", "division by zero")
    assert type(error) is InferenceFailed and error.status_code == 424
    assert "ZeroDivision" not in error.message and "division" not in error.message
