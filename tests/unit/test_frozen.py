"""Routes and route states hash once: equal ones hash alike, and the kept hash shows nowhere else."""

from __future__ import annotations

import dataclasses

from basenode.config import Route
from basenode.route_options import RouteOptions
from basenode.snapshot import Instance, RouteState


def test_equal_routes_hash_alike_and_unequal_ones_are_told_apart_as_dict_keys():
    a, same = (
        Route("web", 9000, "http", options=RouteOptions(maxconn=5)),
        Route("web", 9000, "http", options=RouteOptions(maxconn=5)),
    )
    other = Route("web", 9000, "http", options=RouteOptions(maxconn=6))
    assert a == same and hash(a) == hash(same)
    assert {a: 1, other: 2}[same] == 1 and len({a, same, other}) == 2


def test_a_kept_hash_is_not_a_field_nor_carried_by_replace():
    state = RouteState(Route("web", 9000), (Instance("a", "n1", "10.0.0.1", 80),))
    first = hash(state)
    assert hash(state) == first
    assert "hash" not in repr(state) and set(dataclasses.asdict(state)) == {
        "route", "instances", "backups", "backup_datacenter",
    }  # fmt: skip
    moved = dataclasses.replace(state, instances=(Instance("a", "n1", "10.0.0.1", 81),))
    assert moved != state and hash(moved) == hash(RouteState(state.route, moved.instances))
