"""One bad KV route must not stop routing anywhere (issue: hostile neighbours, item 1).

`basenode/routes/<service>` reaches every node. A key that names a port this node needs (the agent's
HTTP API), or one another process holds, is left out with a warning naming the key, reported in /status
and /health, and every other route, old and new, keeps following the catalog; a node (re)started with
the key present starts HAProxy and the application all the same.
"""

from __future__ import annotations

import json
import socket

from tests.support.basenode_run import serving
from tests.support.ports import free_port
from tests.support.waiting import eventually


def refused(node) -> dict:
    return {r["key"]: r["reason"] for r in node.status()["routes_refused"]}


def test_a_kv_route_on_a_port_in_use_is_left_out_and_every_other_route_follows_the_catalog(
    consul_agent, backends, start_basenode
):
    a, b = backends.start("a"), backends.start("b")
    consul_agent.register("web", a.port, service_id="web-a")
    consul_agent.register("cache", b.port, service_id="cache-b")
    agent_port = consul_agent.ports["http"]
    with socket.socket() as held:  # a port some other process of this node listens on
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        consul_agent.kv_put("basenode/routes/evil", str(agent_port))
        consul_agent.kv_put("basenode/routes/squatter", str(busy))
        port = free_port()
        node = start_basenode(f"web:{port}/http")  # started with both keys present
        eventually(serving(port, ["a"]), timeout=30, what="web through basenode")
        eventually(lambda: set(refused(node)) == {"basenode/routes/squatter"}, what="the squatter refused")
        assert "cannot listen" in refused(node)["basenode/routes/squatter"]
        out = node.output()
        assert "basenode/routes/evil" in out and "taken by the Consul HTTP API" in out
        eventually(node.healthy, timeout=30, what="/health 200: a refused KV route is no failure")
        code, health = node.health()
        assert code == 200 and any("basenode/routes/squatter" in w for w in health["warnings"])

        cache_port = free_port()
        consul_agent.kv_put("basenode/routes/cache", f"{cache_port}/http")  # a new route still arrives
        eventually(serving(cache_port, ["b"]), timeout=30, what="cache through a seamless reload")
        c = backends.start("c")
        consul_agent.register("web", c.port, service_id="web-c")  # and instances still follow
        eventually(serving(port, ["a", "c"]), timeout=30, what="the new web instance")
        assert node.proc.poll() is None

    consul_agent.kv_put("basenode/routes/squatter", f"{busy}/http")  # its key changed: tried again
    eventually(lambda: "basenode/routes/squatter" not in refused(node), what="the squatter route taken")
    assert json.dumps(node.status()["routes_refused"]) == "[]"
