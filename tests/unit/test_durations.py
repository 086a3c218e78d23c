"""Consul's duration syntax for `wait`: what a blocking query's wait may be written as."""

from __future__ import annotations

import pytest

from basenode.durations import format_wait, parse_wait


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300), ("30s", 30), ("1m30s", 90), ("10m", 600), ("500ms", 0.5), ("11m", 600), ("1h", 600)],
)
def test_consul_wait_durations_parse_and_are_capped_at_consuls_ten_minutes(text, seconds):
    assert parse_wait(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "0s", "-1s", "5 m", "m5", "5x", "1s2"])
def test_bad_wait_durations_are_refused(text):
    with pytest.raises(ValueError):
        parse_wait(text)


@pytest.mark.parametrize(("seconds", "text"), [(300, "300s"), (281.25, "281s"), (4.0, "4s"), (0.5, "500ms")])
def test_a_wait_is_sent_in_whole_seconds_or_milliseconds_below_one_second(seconds, text):
    assert format_wait(seconds) == text


@pytest.mark.parametrize("seconds", [300, 281.25, 4.0, 0.5, 0.001])
def test_a_formatted_wait_parses_back_to_at_most_what_was_asked(seconds):
    assert 0 < parse_wait(format_wait(seconds)) <= seconds
