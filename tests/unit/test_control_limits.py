"""The control socket's request parser: size and nesting limits before json ever recurses."""

from __future__ import annotations

import pytest

from basenode.control import MAX_DEPTH, MAX_REQUEST, nesting, parse_request


def test_a_flat_request_parses():
    assert parse_request(b'{"op": "programs"}\nignored') == {"op": "programs"}


@pytest.mark.parametrize(
    "text, depth",
    [(b"{}", 1), (b'{"a": [[1]]}', 3), (b'"[[[[{{{"', 0), (b'["\\"[["]', 1), (b"[" * 4000, 4000)],
)
def test_nesting_skips_strings(text, depth):
    assert nesting(text) == depth


@pytest.mark.parametrize(
    "data, why",
    [
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested deeper"),
        (b"[" * 4000, "nested deeper"),
        (b'"' + b"a" * MAX_REQUEST + b'"', "longer than"),
        (b"{nope", "Expecting"),
    ],
)
def test_bad_requests_raise_value_error(data, why):
    with pytest.raises(ValueError, match=why):
        parse_request(data)
