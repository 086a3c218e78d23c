"""From Consul's answers to a Snapshot: health rules, the catalog dump, hostile instances."""

from __future__ import annotations

import logging

from basenode.config import Route
from basenode.consul import health_entries_from_dump, healthy
from basenode.watch import WarnOnce, build_snapshot


def entry(sid, port=8080, address="10.0.0.5", statuses=("passing",), tags=()):
    return {
        "Node": {"Node": "n1", "Address": "10.0.0.1"},
        "Service": {"ID": sid, "Service": "web", "Address": address, "Port": port, "Tags": list(tags)},
        "Checks": [{"CheckID": f"c{i}", "Status": s} for i, s in enumerate(statuses)],
    }


def test_only_instances_whose_every_check_passes_are_routed_by_default():
    assert healthy([{"Status": "passing"}, {"Status": "passing"}])
    assert not healthy([{"Status": "passing"}, {"Status": "warning"}])
    assert not healthy([{"Status": "critical"}])
    assert healthy([{"Status": "warning"}], include_warning=True)
    assert not healthy([{"Status": "critical"}, {"Status": "warning"}], include_warning=True)
    assert not healthy("garbage")


def test_warning_instances_are_routed_only_with_include_warning():
    entries = {"web": [entry("a"), entry("b", statuses=("passing", "warning"))]}
    plain, _ = build_snapshot([Route("web", 9000)], entries)
    wide, _ = build_snapshot([Route("web", 9000)], entries, include_warning=True)
    assert [i.id for i in plain.routes[0].instances] == ["a"]
    assert [i.id for i in wide.routes[0].instances] == ["a", "b"]


def test_a_route_without_instances_still_has_its_route_state():
    snap, warnings = build_snapshot([Route("web", 9000), Route("db", 9001)], {})
    assert [(r.route.service, r.instances) for r in snap.routes] == [("db", ()), ("web", ())]
    assert warnings == []


def test_a_hostile_instance_is_dropped_with_a_warning_and_the_rest_routed():
    entries = {
        "web": [
            entry("good"),
            entry("evil", address="1.2.3.4; rm"),
            entry("big", port=70000),
            entry("nl", tags=("x\nbind :1",)),
        ]
    }
    snap, warnings = build_snapshot([Route("web", 9000)], entries)
    assert [i.id for i in snap.routes[0].instances] == ["good"]
    assert len(warnings) == 3


def test_the_route_tag_filters_instances():
    entries = {"web": [entry("a", tags=("primary",)), entry("b")]}
    snap, _ = build_snapshot([Route("web", 9000, tag="primary")], entries)
    assert [i.id for i in snap.routes[0].instances] == ["a"]


def test_the_catalog_dump_regroups_as_the_health_endpoint_with_node_checks():
    dump = [
        {
            "Node": "n1",
            "Address": "10.0.0.1",
            "Services": [{"ID": "w1", "Service": "web", "Port": 1}, {"ID": "d1", "Service": "db", "Port": 2}],
            "Checks": [
                {"CheckID": "serfHealth", "ServiceID": "", "Status": "critical"},
                {"CheckID": "c-w1", "ServiceID": "w1", "Status": "passing"},
            ],
        },
        "garbage",
        {
            "Node": "n2",
            "Address": "10.0.0.2",
            "Services": [{"ID": "w2", "Service": "web", "Port": 1}],
            "Checks": [],
        },
    ]
    by_service = health_entries_from_dump(dump)
    assert sorted(by_service) == ["db", "web"]
    w1, w2 = by_service["web"]
    assert sorted(c["CheckID"] for c in w1["Checks"]) == ["c-w1", "serfHealth"]
    assert w2["Node"] == {"Node": "n2", "Address": "10.0.0.2"} and w2["Checks"] == []
    assert [c["CheckID"] for c in by_service["db"][0]["Checks"]] == ["serfHealth"]


def test_each_distinct_warning_is_logged_once_while_it_persists(caplog):
    once = WarnOnce(logging.getLogger("test.warnonce"))
    with caplog.at_level(logging.WARNING, logger="test.warnonce"):
        once.report(["a", "b"])
        once.report(["a", "b"])
        once.report(["a"])
        once.report(["a", "b"])
    assert [r.getMessage() for r in caplog.records] == ["a", "b", "b"]
