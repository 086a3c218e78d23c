"""`basenode explain SERVICE` against a running `basenode run`: a real Consul agent, HAProxy, backends.

Each instance is registered the way a user would get it wrong (a failing check, the wrong tag, an
address Consul accepts but no config file may hold, weight 0), and explain must name that reason;
the routed ones carry HAProxy's runtime state. Another datacenter is a unit test (one agent here).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from basenode.output import haproxy
from basenode.output.haproxy import runtime
from tests.support.basenode_run import serving
from tests.support.ports import free_port
from tests.support.waiting import eventually


def codes(doc, service_id):
    found = [d for d in doc["instances"] if d["id"] == service_id]
    assert len(found) == 1, f"{service_id} not explained exactly once: {doc['instances']}"
    return [r["code"] for r in found[0]["reasons"]], found[0]


def explain(node, service):
    result = node.cli("explain", service, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_explain_names_why_each_instance_gets_traffic_or_not(consul_agent, backends, start_basenode):
    ok, other = backends.start("ok"), backends.start("other")
    register = consul_agent.register
    register("web", ok.port, service_id="web-ok", tags=["v2"])
    register("web", other.port, service_id="web-failing", tags=["v2"], status="critical")
    register("web", other.port, service_id="web-untagged", tags=["v1"])
    consul_agent.register_raw(
        {"ID": "web-bad-address", "Name": "web", "Port": other.port, "Address": "1.2.3.4; rm", "Tags": ["v2"]}
    )
    # Consul 1.8 stores no Weights.Passing 0 (the agent refuses it, the catalog and txn endpoints make
    # it 1), so weight 0 from Consul is a unit test; here an operator sets it in HAProxy.
    register("web", other.port, service_id="web-weight-0", tags=["v2"])
    web_port, unused_port = free_port(), free_port()
    consul_agent.kv_put("basenode/routes/web", f"{web_port}/http tag=v2")
    node = start_basenode(f"unused:{unused_port}")
    eventually(serving(web_port, ["ok", "other"]), timeout=30, what="the routed instances through basenode")
    [weight0_server] = [
        s
        for s in haproxy.show_servers_state(node.settings.haproxy_stats_socket)["web"]
        if s.endswith("_web-weight-0")
    ]
    runtime.command(node.settings.haproxy_stats_socket, ("set", "weight", f"web/{weight0_server}", "0"))
    eventually(serving(web_port, ["ok"]), what="no traffic to the server at weight 0")

    def in_step():
        doc = explain(node, "web")
        return doc if doc["consul"]["in_step"] else None

    doc = eventually(in_step, timeout=15, what="explain to report the applied index in step with the agent")
    assert doc["route"]["tag"] == "v2" and doc["route"]["port"] == web_port
    assert doc["consul"]["applied_index"] == doc["consul"]["agent_index"]

    reasons, web_ok = codes(doc, "web-ok")
    assert reasons == [] and web_ok["routed"] is True
    assert web_ok["haproxy"]["state"] == "UP" and web_ok["haproxy"]["sessions"] == 0

    reasons, failing = codes(doc, "web-failing")
    assert reasons == ["check-failing"] and failing["routed"] is False
    assert "ttl-web-failing" in failing["reasons"][0]["detail"]

    assert codes(doc, "web-untagged")[0] == ["tag"]

    reasons, bad = codes(doc, "web-bad-address")
    assert reasons == ["invalid"]
    assert "address" in bad["reasons"][0]["detail"] and "rm" not in json.dumps(bad)  # never the value

    reasons, weight0 = codes(doc, "web-weight-0")
    assert reasons == ["weight-0"] and weight0["routed"] is False
    assert weight0["haproxy"] == {"server": weight0_server, "state": "UP", "weight": 0, "sessions": 0}
    assert doc["routed"] == 1
    assert doc["agent_only"] == [] and doc["haproxy_only"] == []  # the agent and the catalog agree

    table = node.cli("explain", "web")
    assert table.returncode == 0, table.stderr
    lines = {line.split()[0]: line for line in table.stdout.splitlines() if line.startswith("web-")}
    assert "routed" in lines["web-ok"] and " UP " in lines["web-ok"]
    assert "ttl-web-failing" in lines["web-failing"] and "not routed" in lines["web-failing"]

    assert explain(node, "unused")["route_reasons"] == []
    nothing = explain(node, "nosuch")
    assert [r["code"] for r in nothing["route_reasons"]] == ["no-route"] and nothing["instances"] == []


def test_explain_shows_a_deregistered_server_draining_its_open_session(
    consul_agent, backends, start_basenode
):
    db = backends.start("db")
    consul_agent.register("db", db.port, service_id="db-1")
    port = free_port()
    node = start_basenode(f"db:{port}")  # tcp: a client connection is one session on the server
    eventually(node.healthy, timeout=30, what="basenode healthy")
    eventually(lambda: codes(explain(node, "db"), "db-1")[1]["routed"], timeout=30, what="db-1 routed")

    with socket.create_connection(("127.0.0.1", port), timeout=5):  # held open: one session
        eventually(
            lambda: codes(explain(node, "db"), "db-1")[1]["haproxy"]["sessions"] == 1,
            what="the open session counted on db-1's server",
        )
        consul_agent.deregister("db-1")

        def draining():
            doc = explain(node, "db")
            return doc if doc["haproxy_only"] else None

        doc = eventually(draining, what="the removed server still held by its session")
        assert doc["instances"] == []
        [server] = doc["haproxy_only"]
        assert server["reason"]["code"] == "draining" and server["sessions"] == 1
        assert server["state"] == "MAINT"


def test_explain_with_no_basenode_answering_exits_1_naming_the_address(zipapp):
    port = free_port()
    result = subprocess.run(
        [sys.executable, str(zipapp), "explain", "web", "--status-addr", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith(("BASENODE_", "CONSUL_"))},
    )
    assert result.returncode == 1 and result.stdout == ""
    assert f"no status endpoint answers at 127.0.0.1:{port}" in result.stderr
