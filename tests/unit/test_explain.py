"""explain(answers): why each instance gets traffic from this node, from answers recorded from Consul.

tests/unit/data/explain_consul_answers.json is /v1/health/service/web as Consul 1.8.7 answered it
(every check state, maintenance mode, a meta value that fails validation). Shapes Consul 1.8 cannot
produce on one agent (another datacenter, Weights.Passing 0) are that recorded entry with one field
changed, as a second datacenter or another writer would give it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from basenode.config import Route
from basenode.dependency.health_service import decode, passing_instances
from basenode.explain import (
    Answers,
    Applied,
    Server,
    explain,
    format_table,
)
from basenode.explain_answers import server_state, sessions_from_stat
from basenode.snapshot import instance_from_health

RECORDED = json.loads((Path(__file__).parent / "data" / "explain_consul_answers.json").read_text())
ENTRIES = RECORDED["health_service_web"]
ROUTE = Route("web", 9302, "http", tag="v2", source="consul kv basenode/routes/web")


def entry(service_id):
    return copy.deepcopy(next(e for e in ENTRIES if e["Service"]["ID"] == service_id))


def key(service_id):
    return instance_from_health(entry(service_id)).key


def answers(**changes):
    servers = {key("web-ok"): Server(key("web-ok"), "UP", 1, 3)}
    base = dict(
        service="web",
        datacenter="dc1",
        entries=ENTRIES,
        agent_index=40,
        applied=Applied((ROUTE,), {"web": 40}),
        servers=servers,
    )
    base.update(changes)
    return Answers(**base)


def instance(doc, service_id):
    [found] = [d for d in doc["instances"] if d["id"] == service_id]
    return found


def codes(doc, service_id):
    return [r["code"] for r in instance(doc, service_id)["reasons"]]


def test_a_passing_tagged_instance_in_haproxy_is_routed_with_its_runtime_state():
    doc = explain(answers())
    web_ok = instance(doc, "web-ok")
    assert web_ok["routed"] is True and web_ok["reasons"] == []
    assert web_ok["haproxy"] == {"server": key("web-ok"), "state": "UP", "weight": 1, "sessions": 3}
    assert (web_ok["address"], web_ok["port"], web_ok["datacenter"]) == ("127.0.0.1", 8080, "dc1")
    assert doc["routed"] == 1
    assert doc["consul"] == {
        "applied_index": 40,
        "agent_index": 40,
        "in_step": True,
        "unread_datacenters": [],
    }


def test_a_failing_check_is_named():
    doc = explain(answers())
    assert codes(doc, "web-failing") == ["check-failing"]
    assert "'ttl-web-failing' is 'critical'" in instance(doc, "web-failing")["reasons"][0]["detail"]
    assert instance(doc, "web-failing")["routed"] is False


def test_a_warning_check_is_named_and_include_warning_admits_it():
    assert codes(explain(answers()), "web-warning") == ["check-warning"]
    # With include_warning it passes every rule, so it is missing from HAProxy: not applied yet.
    assert codes(explain(answers(include_warning=True)), "web-warning") == ["not-applied"]


def test_maintenance_mode_is_named_as_such():
    doc = explain(answers())
    assert codes(doc, "web-maint") == ["maintenance"]
    assert "_service_maintenance:web-maint" in instance(doc, "web-maint")["reasons"][0]["detail"]


def test_the_routes_tag_filter_is_named():
    doc = explain(answers())
    assert codes(doc, "web-untagged") == ["tag"]
    assert "'v2'" in instance(doc, "web-untagged")["reasons"][0]["detail"]


def test_a_value_that_failed_validation_is_named_by_field_never_by_value():
    doc = explain(answers())
    assert codes(doc, "web-bad-meta") == ["invalid"]
    assert "meta value of key password" in instance(doc, "web-bad-meta")["reasons"][0]["detail"]
    assert "hunter2" not in json.dumps(doc) and "hunter2" not in format_table(doc)


def test_an_invalid_address_is_named():
    bad = entry("web-ok")
    bad["Service"]["Address"] = "1.2.3.4; rm"
    doc = explain(answers(entries=[bad]))
    assert codes(doc, "web-ok") == ["invalid"]
    assert (
        "address is neither an IP address nor a host name" in instance(doc, "web-ok")["reasons"][0]["detail"]
    )
    assert "rm" not in json.dumps(instance(doc, "web-ok"))


def test_weight_0_is_named():
    heavy = entry("web-ok")
    heavy["Service"]["Weights"] = {"Passing": 0, "Warning": 1}
    servers = {key("web-ok"): Server(key("web-ok"), "UP", 0, 0)}
    doc = explain(answers(entries=[heavy], servers=servers))
    assert codes(doc, "web-ok") == ["weight-0"]
    assert instance(doc, "web-ok")["routed"] is False
    assert doc["routed"] == 0


def test_an_instance_of_another_datacenter_is_named_and_never_matched_with_haproxy():
    remote = entry("web-ok")
    remote["Node"]["Datacenter"] = "dc2"
    doc = explain(answers(remote={"dc2": [remote]}))
    [far] = [d for d in doc["instances"] if d["datacenter"] == "dc2"]
    assert [r["code"] for r in far["reasons"]] == ["datacenter"]
    assert "dc2" in far["reasons"][0]["detail"] and far["haproxy"] is None and far["routed"] is False
    [near] = [d for d in doc["instances"] if d["id"] == "web-ok" and d["datacenter"] == "dc1"]
    assert near["routed"] is True and doc["routed"] == 1  # the local one is still routed
    assert doc["haproxy_only"] == []


def test_a_datacenter_that_could_not_be_read_is_listed():
    doc = explain(answers(remote_errors={"dc3": "ConsulException: 500 No path to datacenter"}))
    assert doc["consul"]["unread_datacenters"] == [
        {"datacenter": "dc3", "error": "ConsulException: 500 No path to datacenter"}
    ]


def test_a_service_without_a_route_is_named_for_every_instance():
    doc = explain(answers(applied=Applied((Route("db", 9301),), {})))
    assert doc["route"] is None and [r["code"] for r in doc["route_reasons"]] == ["no-route"]
    assert codes(doc, "web-ok") == ["no-route"]
    assert "routes: db" in doc["route_reasons"][0]["detail"]


def test_a_refused_kv_route_says_why():
    refused = {"basenode/routes/web": "port 8500 is taken by the Consul agent (http)"}
    doc = explain(answers(applied=Applied(()), refused_routes=refused))
    assert [r["code"] for r in doc["route_reasons"]] == ["route-refused"]
    assert "port 8500 is taken" in doc["route_reasons"][0]["detail"]


def test_haproxy_runtime_states_are_named_draining_maint_down():
    for state, code in (("DRAIN", "draining"), ("MAINT", "maint"), ("DOWN", "haproxy-down")):
        servers = {key("web-ok"): Server(key("web-ok"), state, 1, 2)}
        doc = explain(answers(servers=servers))
        assert codes(doc, "web-ok") == [code], state
        assert instance(doc, "web-ok")["routed"] is False


def test_a_server_haproxy_keeps_for_its_open_sessions_is_draining():
    servers = {
        key("web-ok"): Server(key("web-ok"), "UP", 1, 0),
        "gone_web-9": Server("gone_web-9", "MAINT", 1, 2),
    }
    doc = explain(answers(servers=servers))
    [left] = doc["haproxy_only"]
    assert left["server"] == "gone_web-9" and left["reason"]["code"] == "draining"
    assert "2 open sessions" in left["reason"]["detail"]


def test_an_instance_that_passes_but_is_not_in_haproxy_is_not_applied_and_the_index_behind():
    doc = explain(answers(servers={}, agent_index=44, last_error="apply: stats socket refused"))
    assert codes(doc, "web-ok") == ["not-applied"]
    assert "apply: stats socket refused" in instance(doc, "web-ok")["reasons"][0]["detail"]
    assert doc["consul"]["in_step"] is False and doc["consul"]["applied_index"] == 40


def test_haproxy_not_read_makes_routing_unknown_not_false():
    doc = explain(answers(servers=None, haproxy_error="stats socket: connection refused"))
    assert instance(doc, "web-ok")["routed"] is None
    assert codes(doc, "web-ok") == ["haproxy-unknown"]


def test_explain_agrees_with_the_routing_decision_on_the_recorded_answer():
    """Every instance explain finds passing the rules is exactly what routing would send traffic to."""
    for include_warning in (False, True):
        value, _ = decode("web", ENTRIES, include_warning)
        routed = {i.key for i in passing_instances(value, ROUTE.tag)}
        servers = {k: Server(k, "UP", 1, 0) for k in routed}
        doc = explain(answers(servers=servers, include_warning=include_warning))
        assert {d["server"] for d in doc["instances"] if d["routed"]} == routed
        assert all(not d["reasons"] for d in doc["instances"] if d["routed"])


def test_server_states_and_sessions_are_read_from_haproxys_answers():
    assert server_state(2, 0) == "UP" and server_state(0, 0) == "DOWN"
    assert server_state(2, 0x01) == "MAINT" and server_state(2, 0x08) == "DRAIN"
    stat = (
        "# pxname,svname,qcur,qmax,scur,smax\n"
        "web,FRONTEND,,,5,9\n"
        "web,a,0,0,2,3\n"
        "other,a,0,0,7,7\n"
        "web,BACKEND,0,0,2,3\n"
    )
    assert sessions_from_stat(stat, "web") == {"a": 2}
    assert sessions_from_stat("Unknown command\n", "web") == {}


def test_the_table_has_one_line_per_instance_with_its_reason():
    text = format_table(explain(answers()))
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("web-")}
    assert set(lines) == {e["Service"]["ID"] for e in ENTRIES}
    assert " UP " in lines["web-ok"] and lines["web-ok"].rstrip().endswith("routed")
    assert "'ttl-web-failing' is 'critical'" in lines["web-failing"]
    assert "in step" in text and "route :9302 http, tag v2" in text


def test_the_endpoint_refuses_a_name_that_is_not_a_service_name_before_reading_anything(tmp_path):
    from basenode.config import Settings
    from basenode.explain import endpoint

    for path in ("/explain", "/explain?service=", "/explain?service=a%0Ab", "/explain?service=..%2Fkv"):
        code, doc = endpoint(Settings(state_dir=tmp_path), None, path)
        assert code == 400 and "service=NAME" in doc["error"], path


def test_a_registration_the_agent_holds_but_the_catalog_does_not_is_listed():
    local = {"ID": "web-new", "Service": "web", "Port": 8090, "Tags": ["v2"]}
    doc = explain(answers(agent_only=[local]))
    assert doc["agent_only"] == [{"id": "web-new", "reason": doc["agent_only"][0]["reason"]}]
    assert doc["agent_only"][0]["reason"]["code"] == "not-in-catalog"
    assert "not-in-catalog" not in json.dumps(doc["instances"])
    assert "web-new" in format_table(doc)
