"""The Consul agent killed, answering errors and garbage, and cut off from its server."""

from __future__ import annotations

import os
import signal
import time

from tests.support.backends import Load
from tests.support.basenode_run import HealthPoller, serving
from tests.support.consul_proxy import NOT_JSON, WRONG_SHAPE, ConsulProxy
from tests.support.ports import free_port
from tests.support.waiting import eventually

UNREACHABLE_SECONDS = 30.0


def test_a_killed_consul_agent_is_restarted_rejoins_and_routing_never_stops(
    consul_agent, backends, start_basenode
):
    """basenode's own agent (a client joined to the test's server) gets SIGKILL. HAProxy keeps
    serving the last good config; the agent's death cuts the watch's reads (counted, logged, and
    /health 503 `consul:` until the restarted agent answers); the supervisor restarts it, it
    rejoins, and a registration made after that is routed."""
    a, b = backends.start("a"), backends.start("b")
    consul_agent.register("web", a.port, service_id="web-a")
    port = free_port()
    node = start_basenode(f"web:{port}/http", own_agent=True)
    eventually(serving(port, ["a"]), timeout=60, what="a through basenode and its own agent")
    eventually(node.healthy, timeout=30, what="/health 200 before the fault")
    (agent_pid,) = node.child_pids("consul")
    restarts = node.metric('basenode_program_restarts_total{program="consul"}')
    errors = node.metric("basenode_consul_errors_total")

    with Load(port) as load, HealthPoller(node) as health:
        os.kill(agent_pid, signal.SIGKILL)
        eventually(lambda: health.problems("consul: "), timeout=30, what="/health 503 with a consul problem")
        eventually(lambda: node.child_pids("consul") not in ([], [agent_pid]), timeout=30, what="a new agent")
        eventually(node.healthy, timeout=60, what="/health 200 once the new agent answers")
        consul_agent.register("web", b.port, service_id="web-b")
        eventually(serving(port, ["a", "b"]), timeout=30, what="a registration after recovery to be routed")
        load.wait_for_more(20)
    assert load.failures == []
    assert node.metric('basenode_program_restarts_total{program="consul"}') == restarts + 1
    assert node.metric("basenode_consul_errors_total") > errors
    out = node.output()
    assert "consul: killed by SIGKILL" in out
    assert "read failed, keeping the last good state" in out


def test_consul_answering_500_and_then_garbage_changes_no_route_and_is_reported(
    consul_agent, backends, start_basenode
):
    """Consul's HTTP API (a proxy in front of the real agent) answers 500, then JSON that does not
    parse, then JSON of the wrong shape; after each fault it answers properly again. During each,
    no route changes (a wrong-shaped answer once emptied every backend), /health is 503 `consul:`
    naming the error and basenode_consul_errors_total grows; after each, /health is 200 again."""
    a, b = backends.start("a"), backends.start("b")
    consul_agent.register("web", a.port, service_id="web-a")
    proxy = ConsulProxy(consul_agent.http_addr)
    try:
        port = free_port()
        node = start_basenode(f"web:{port}/http", consul_addr=proxy.http_addr)
        eventually(serving(port, ["a"]), timeout=30, what="a through basenode and the proxy")
        eventually(node.healthy, timeout=30, what="/health 200 before the fault")
        with Load(port) as load:
            for garbage, shows in ((b"", "500 rpc error"), (NOT_JSON, "decode JSON"), (WRONG_SHAPE, "not a")):
                errors = node.metric("basenode_consul_errors_total")
                proxy.set_mode("garbage" if garbage else "500", garbage)
                problems = eventually(
                    lambda s=shows: [p for p in node.problems("consul: ") if s in p],
                    timeout=30,
                    what=f"/health 503 with a consul problem naming {shows!r}",
                )
                eventually(
                    lambda e=errors: node.metric("basenode_consul_errors_total") > e,
                    what="the failed queries to be counted",
                )
                load.wait_for_more(50)
                assert load.seen == {"a"} and load.failures == [], problems
                proxy.set_mode("pass")
                eventually(node.healthy, timeout=30, what=f"/health 200 after {shows!r}")
            consul_agent.register("web", b.port, service_id="web-b")
            eventually(
                serving(port, ["a", "b"]), timeout=30, what="a registration after recovery to be routed"
            )
        assert load.failures == []
        out = node.output()
        assert "ConsulException: 500 rpc error" in out
        assert "not a list of objects" in out
        assert out.count("read works again") >= 3
    finally:
        proxy.close()


def test_consul_servers_unreachable_for_30_s_keep_routing_and_recover(consul_agent, backends, start_basenode):
    """The only Consul server (the test's agent; basenode's own agent is a client joined to it) is
    stopped with SIGSTOP for 30 s, then continued. Routing goes on all along; /health is 503 with a
    `consul:` problem, basenode_healthy and basenode_consul_ok 0 during the outage (the watch's blocking
    query just waits, so it counts no errors); the client agent's log in basenode's output shows the
    server failing; afterwards the agent reconnects by itself, /health is 200 and a new registration
    is routed."""
    a, b = backends.start("a"), backends.start("b")
    consul_agent.register("web", a.port, service_id="web-a")
    port = free_port()
    node = start_basenode(f"web:{port}/http", own_agent=True)
    eventually(serving(port, ["a"]), timeout=60, what="a through basenode and its own agent")
    eventually(node.healthy, timeout=30, what="/health 200 before the fault")
    assert node.metric("basenode_healthy") == 1
    server = consul_agent.process
    assert server is not None
    with Load(port) as load:
        os.kill(server.pid, signal.SIGSTOP)
        try:
            resume_at = time.monotonic() + UNREACHABLE_SECONDS
            problems = eventually(lambda: node.problems("consul: "), timeout=25, what="/health 503 consul")
            assert node.metric("basenode_healthy") == 0, problems
            assert node.metric("basenode_consul_ok") == 0
            eventually(lambda: "EventMemberFailed" in node.output(), timeout=25, what="the agent to log it")
            while time.monotonic() < resume_at:  # the outage lasts its 30 s; traffic flows all along
                load.wait_for_more(20)
                assert load.failures == []
        finally:
            os.kill(server.pid, signal.SIGCONT)
        eventually(node.healthy, timeout=90, what="/health 200 after the server is back")
        consul_agent.register("web", b.port, service_id="web-b")
        eventually(serving(port, ["a", "b"]), timeout=30, what="a registration after recovery to be routed")
    assert load.failures == []
    assert node.metric("basenode_healthy") == 1
    assert node.metric("basenode_consul_ok") == 1
