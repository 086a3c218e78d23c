"""Routes from Consul KV merged with static routes: what a bad or clashing KV entry does."""

from __future__ import annotations

import pytest

from basenode.config import ConfigError, Route
from basenode.routes import merge_routes, parse_kv_route

P = "basenode/routes/"


@pytest.mark.parametrize(
    ("value", "port", "mode", "tag"),
    [
        ("9302", 9302, "tcp", None),
        ("9302/http", 9302, "http", None),
        ("9302/http tag=primary", 9302, "http", "primary"),
        (" 9302  tag=v1.2 ", 9302, "tcp", "v1.2"),
    ],
)
def test_a_kv_value_gives_port_mode_and_optional_tag(value, port, mode, tag):
    route = parse_kv_route(P + "web", value)
    assert (route.service, route.port, route.mode, route.tag) == ("web", port, mode, tag)
    assert route.source == "consul kv basenode/routes/web"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("web", "70000"),
        ("web", "0"),
        ("web", "x"),
        ("web", "9302/udp"),
        ("web", ""),
        ("web", None),
        ("web", "9302 tag=a\nbind"),
        ("web", "9302 color=red"),
        ("bad name", "9302"),
        ("a/b", "9302"),
        ("web", "9302 tag="),
        # Names a Consul read cannot take: every read of the catalog failed while one was routed.
        (".", "9302"),
        ("..", "9302"),
        ("web\n", "9302"),
    ],
)
def test_a_bad_kv_value_is_an_error_naming_key_and_value(key, value):
    with pytest.raises(ConfigError) as e:
        parse_kv_route(P + key, value)
    assert P + key in str(e.value)


def test_bad_kv_entries_are_skipped_with_one_warning_each_and_good_ones_kept():
    routes, warnings = merge_routes((), {P + "web": "9302/http", P + "bad": "70000", P + "worse": "x/y/z"})
    assert [r.service for r in routes] == ["web"]
    assert len(warnings) == 2
    assert any("basenode/routes/bad" in w and "70000" in w for w in warnings)


def test_static_routes_win_over_kv_on_service_or_port():
    static = (Route("web", 9000, source="--routes"),)
    routes, warnings = merge_routes(static, {P + "web": "9100", P + "db": "9000", P + "cache": "9200"})
    assert [(r.service, r.port) for r in routes] == [("cache", 9200), ("web", 9000)]
    assert len(warnings) == 2
    assert all("--routes" in w for w in warnings)


def test_two_kv_routes_on_one_port_keep_the_first_by_key():
    routes, warnings = merge_routes((), {P + "b": "9000", P + "a": "9000"})
    assert [r.service for r in routes] == ["a"]
    assert len(warnings) == 1 and "basenode/routes/b" in warnings[0]


def test_a_kv_folder_is_not_a_route():
    routes, warnings = merge_routes((), {P: None, P + "web": "9000"})
    assert [r.service for r in routes] == ["web"]
    assert warnings == []
