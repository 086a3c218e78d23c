"""From Consul's answers to a Snapshot: health rules, the catalog dump, hostile instances, Discovery."""

from __future__ import annotations

import logging

from basenode.config import Route, Settings
from basenode.dependency import PREFIX, SERVICE, Query
from basenode.dependency import health_service as hs
from basenode.routes import ROUTES_QUERY, Discovery, build_snapshot, route_queries
from basenode.watch import WarnOnce
from basenode.watch.catalog import entries_from_dump


def entry(sid, port=8080, address="10.0.0.5", statuses=("passing",), tags=(), service="web"):
    return {
        "Node": {"Node": "n1", "Address": "10.0.0.1"},
        "Service": {"ID": sid, "Service": service, "Address": address, "Port": port, "Tags": list(tags)},
        "Checks": [{"CheckID": f"c{i}", "Status": s} for i, s in enumerate(statuses)],
    }


def data_for(entries_by_service, include_warning=False):
    """The watch's values for these health answers, and the warnings of what decoding dropped."""
    data, warnings = {}, []
    for name, entries in entries_by_service.items():
        data[Query(SERVICE, name)], dropped = hs.decode(name, entries, include_warning)
        warnings += dropped
    return data, warnings


def test_only_instances_whose_every_check_passes_are_routed_by_default():
    assert hs.healthy([{"Status": "passing"}, {"Status": "passing"}])
    assert not hs.healthy([{"Status": "passing"}, {"Status": "warning"}])
    assert not hs.healthy([{"Status": "critical"}])
    assert hs.healthy([{"Status": "warning"}], include_warning=True)
    assert not hs.healthy([{"Status": "critical"}, {"Status": "warning"}], include_warning=True)
    assert not hs.healthy("garbage")
    assert not hs.healthy(["garbage"])


def test_warning_instances_are_routed_only_with_include_warning():
    entries = {"web": [entry("a"), entry("b", statuses=("passing", "warning"))]}
    plain = build_snapshot([Route("web", 9000)], data_for(entries)[0])
    wide = build_snapshot([Route("web", 9000)], data_for(entries, include_warning=True)[0])
    assert [i.id for i in plain.routes[0].instances] == ["a"]
    assert [i.id for i in wide.routes[0].instances] == ["a", "b"]


def test_a_route_without_instances_still_has_its_route_state():
    snap = build_snapshot([Route("web", 9000), Route("db", 9001)], {})
    assert [(r.route.service, r.instances) for r in snap.routes] == [("db", ()), ("web", ())]


def test_a_hostile_instance_is_dropped_with_a_warning_and_the_rest_routed():
    entries = {
        "web": [
            entry("good"),
            entry("evil", address="1.2.3.4; rm"),
            entry("big", port=70000),
            entry("nl", tags=("x\nbind :1",)),
        ]
    }
    data, warnings = data_for(entries)
    snap = build_snapshot([Route("web", 9000)], data)
    assert [i.id for i in snap.routes[0].instances] == ["good"]
    assert len(warnings) == 3


def test_the_route_tag_filters_instances():
    data, _ = data_for({"web": [entry("a", tags=("primary",)), entry("b")]})
    snap = build_snapshot([Route("web", 9000, tag="primary")], data)
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
        {
            "Node": "n2",
            "Address": "10.0.0.2",
            "Services": [{"ID": "w2", "Service": "web", "Port": 1}, "garbage"],
            "Checks": [],
        },
    ]
    by_service = entries_from_dump(dump, ["web", "db", "cache"])
    assert sorted(by_service) == ["cache", "db", "web"]
    assert by_service["cache"] == []  # wanted, in no node: no instances
    w1, w2 = by_service["web"]
    assert sorted(c["CheckID"] for c in w1["Checks"]) == ["c-w1", "serfHealth"]
    assert w2["Node"]["Node"] == "n2" and w2["Checks"] == []
    assert [c["CheckID"] for c in by_service["db"][0]["Checks"]] == ["serfHealth"]
    # What the dump gives decodes as the health endpoint's answer does: n1's node check is critical.
    value, warnings = hs.decode("web", by_service["web"], include_warning=False)
    assert [(i.id, i.address, passing) for i, passing in value] == [
        ("w1", "10.0.0.1", False),
        ("w2", "10.0.0.2", True),
    ]
    assert warnings == []


def test_the_catalog_dump_gives_only_the_services_asked_for():
    dump = [{"Node": "n1", "Address": "10.0.0.1", "Services": [{"ID": "d1", "Service": "db", "Port": 2}]}]
    assert entries_from_dump(dump, ["web"]) == {"web": []}


def test_the_catalog_dump_leaves_out_peered_nodes_services_and_other_namespaces():
    dump = [
        {
            "Node": "p1",
            "Address": "10.9.0.1",
            "PeerName": "west",
            "Services": [{"ID": "p", "Service": "web", "Port": 1}],
        },
        {
            "Node": "n1",
            "Address": "10.0.0.1",
            "Services": [
                {"ID": "local", "Service": "web", "Port": 1},
                {"ID": "peered", "Service": "web", "Port": 1, "PeerName": "west"},
                {"ID": "team", "Service": "web", "Port": 1, "Namespace": "team-a"},
                {
                    "ID": "default-ns",
                    "Service": "web",
                    "Port": 2,
                    "Namespace": "default",
                    "Partition": "default",
                },
            ],
        },
    ]
    assert [e["Service"]["ID"] for e in entries_from_dump(dump, ["web"])["web"]] == ["local", "default-ns"]


def test_routes_depend_on_the_routes_prefix_and_each_routed_service():
    assert route_queries([Route("web", 9000), Route("db", 9001)]) == {
        Query(PREFIX, "basenode/routes/"),
        Query(SERVICE, "web"),
        Query(SERVICE, "db"),
    }
    assert Query(PREFIX, "basenode/routes/") == ROUTES_QUERY


def test_discovery_waits_for_the_routes_prefix_and_then_for_every_routed_service():
    discovery = Discovery(Settings(routes=(Route("web", 9000),)))
    assert discovery.snapshot({}) is None
    kv_only = {ROUTES_QUERY: (("basenode/routes/db", "9001"),)}
    assert discovery.wanted(kv_only) == {ROUTES_QUERY, Query(SERVICE, "web"), Query(SERVICE, "db")}
    assert discovery.snapshot(kv_only) is None  # a frontend appears with its instances, not empty first
    data, _ = data_for({"web": [entry("w1")], "db": [entry("d1", service="db")]})
    snap = discovery.snapshot({**kv_only, **data})
    assert snap is not None
    assert [(r.route.service, [i.id for i in r.instances]) for r in snap.routes] == [
        ("db", ["d1"]),
        ("web", ["w1"]),
    ]


def test_a_routed_service_whose_value_is_gone_keeps_its_last_instances():
    discovery = Discovery(Settings(routes=(Route("web", 9000),)))
    data, _ = data_for({"web": [entry("w1")]})
    first = discovery.snapshot({ROUTES_QUERY: (), **data})
    assert first is not None and [i.id for i in first.routes[0].instances] == ["w1"]
    # A new KV route arrives; web's value is not in this view (its read is failing): web stays as it was.
    later = discovery.snapshot({ROUTES_QUERY: (("basenode/routes/db", "9001"),), **data_for({"db": []})[0]})
    assert later is not None
    assert [(r.route.service, [i.id for i in r.instances]) for r in later.routes] == [
        ("db", []),
        ("web", ["w1"]),
    ]


def test_discovery_logs_each_bad_kv_route_once_while_it_stays(caplog):
    discovery = Discovery(Settings())
    data = {ROUTES_QUERY: (("basenode/routes/bad", "70000"),)}
    with caplog.at_level(logging.WARNING, logger="basenode.watch"):
        discovery.routes(data)
        discovery.routes(data)
    assert len([r for r in caplog.records if "basenode/routes/bad" in r.getMessage()]) == 1


def test_instance_totals_count_every_instance_whatever_its_health():
    data, _ = data_for({"web": [entry("a"), entry("b", statuses=("critical",))]})
    assert Discovery.instance_totals({**data, ROUTES_QUERY: ()}) == {"web": 2}


def test_each_distinct_warning_is_logged_once_while_it_persists(caplog):
    once = WarnOnce(logging.getLogger("test.warnonce"))
    with caplog.at_level(logging.WARNING, logger="test.warnonce"):
        once.report(["a", "b"])
        once.report(["a", "b"])
        once.report(["a"])
        once.report(["a", "b"])
    assert [r.getMessage() for r in caplog.records] == ["a", "b", "b"]


def test_discovery_reads_a_changed_service_again_and_reuses_the_routes_whose_values_stayed():
    discovery = Discovery(Settings(routes=(Route("web", 9000), Route("db", 9001))))
    data, _ = data_for({"web": [entry("w1")], "db": [entry("d1", service="db")]})
    first = discovery.snapshot({ROUTES_QUERY: (), **data})
    changed, _ = data_for({"web": [entry("w1"), entry("w2", port=8081)]})
    second = discovery.snapshot({ROUTES_QUERY: (), **data, **changed})
    assert first is not None and second is not None
    by_name = {r.route.service: r for r in second.routes}
    assert [i.id for i in by_name["web"].instances] == ["w1", "w2"]
    # db's value is the same object: its state is the one computed before, not validated again
    assert by_name["db"] is {r.route.service: r for r in first.routes}["db"]
    # a value replaced by an equal new object is read again and gives the same state
    again, _ = data_for({"web": [entry("w1"), entry("w2", port=8081)], "db": [entry("d1", service="db")]})
    assert discovery.snapshot({ROUTES_QUERY: (), **again}) == second


def test_discovery_told_which_queries_changed_gives_the_snapshot_it_would_give_from_everything():
    routes = (Route("web", 9000), Route("db", 9001, failover=("dc2",)), Route("api", 9002))
    told = Discovery(Settings(routes=routes))
    answers = {"web": [entry("w1")], "db": [entry("d1", service="db")], "api": [entry("a1", service="api")]}
    data = {ROUTES_QUERY: (), **data_for(answers)[0], Query(SERVICE, "db", "dc2"): ()}
    told.snapshot(data)
    steps = [
        {Query(SERVICE, "web"): [entry("w1"), entry("w2", port=8081)]},
        {Query(SERVICE, "db", "dc2"): [entry("r1", service="db")]},
        {Query(SERVICE, "db"): []},  # db down here: its dc2 instances become the backups
        {Query(SERVICE, "api"): [entry("a2", service="api")], Query(SERVICE, "web"): []},
    ]
    for step in steps:
        data = {**data}
        for query, entries in step.items():
            data[query] = data_for({query.name: entries})[0][Query(SERVICE, query.name)]
        assert told.snapshot(data, frozenset(step)) == Discovery(Settings(routes=routes)).snapshot(data)
    # a query no route reads changes nothing, and the snapshot is the same object
    last = told.last
    assert told.snapshot({**data, Query(SERVICE, "other"): ()}, {Query(SERVICE, "other")}) is last
