"""The status server's request-head parser: what it accepts, and where it stops reading."""

from __future__ import annotations

import pytest

from basenode.status.httpserve import Limits, parse_head

LIMITS = Limits(max_request_line=64, max_head=256, max_headers=4)


def code(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_a_whole_head_gives_method_and_path(eol):
    head = b"GET /health?x=1 HTTP/1.1" + eol + b"Host: a" + eol + eol
    assert parse_head(head, LIMITS) == (("GET", "/health?x=1"), None)


@pytest.mark.parametrize("partial", [b"", b"GET /hea", b"GET / HTTP/1.0\r\nHost: a\r\n"])
def test_a_partial_head_asks_for_more(partial):
    assert parse_head(partial, LIMITS) == (None, None)


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"G" * 65, 414),  # no end of line in sight
        (b"GET /" + b"a" * 70 + b" HTTP/1.0\r\n\r\n", 414),
        (b"GET / HTTP/1.0\r\nX: " + b"a" * 300, 431),
        (b"GET / HTTP/1.0\r\n" + b"X: a\r\n" * 6 + b"\r\n", 431),
        (b"GET / HTTP/1.0\r\n" + b"X: a\r\n" * 6, 431),
        (b"GET /\r\n\r\n", 400),
        (b"get / HTTP/1.0\r\n\r\n", 400),
        (b"GET /\x00 HTTP/1.0\r\n\r\n", 400),
        (b"GET http://x/ HTTP/1.0\r\n\r\n", 400),
    ],
)
def test_bad_or_oversized_heads_are_answered_with_an_error(data, expected):
    request, error = parse_head(data, LIMITS)
    assert request is None and error is not None and code(error) == expected
