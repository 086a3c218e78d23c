"""Failover to another datacenter: two real Consul datacenters on loopback (two -dev servers with
their own -datacenter, joined over the WAN), `basenode run` in dc1, real backends.

What users rely on: a route with `failover = ["dc2"]` serves dc1's instances; when they are all gone
(deregistered, failing their Consul check, or dead and marked down by HAProxy's own check) requests
go to dc2's, and come back when dc1's return, with no HAProxy reload in any of it and, under steady
load, no failed request on the Consul path.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.conftest import require_binary
from tests.support.backends import Backend, Load
from tests.support.basenode_run import serving
from tests.support.consul_agent import ConsulAgent, running_agent
from tests.support.ports import free_port
from tests.support.waiting import eventually


def datacenter(consul_agent: ConsulAgent, name: str) -> Iterator[ConsulAgent]:
    """A -dev server of datacenter `name`, joined to dc1 (the test's agent) over the WAN."""
    for agent in running_agent(require_binary("consul"), name):
        consul_agent.join_wan(agent)
        yield agent


@pytest.fixture
def dc2(consul_agent: ConsulAgent) -> Iterator[ConsulAgent]:
    yield from datacenter(consul_agent, "dc2")


def test_a_route_fails_over_to_another_datacenter_and_back_with_no_reload_and_no_failed_request(
    consul_agent, dc2, backends, start_basenode
):
    a, b = backends.start("a"), backends.start("b")
    consul_agent.register("web", a.port, service_id="web-a")
    dc2.register("web", b.port, service_id="web-b")
    port = free_port()
    node = start_basenode(f"web:{port}/http;failover=dc2")
    eventually(serving(port, ["a"]), timeout=30, what="dc1's instance, the backup unused")
    assert "server dc2:" in node.settings.haproxy_cfg.read_text()  # dc2's instance is a backup server
    before = node.proc_info()

    with Load(port) as load:
        load.wait_for_more(50)
        consul_agent.deregister("web-a")
        eventually(serving(port, ["b"]), what="dc2's instance once dc1 has none")
        load.wait_for_more(50)
        consul_agent.register("web", a.port, service_id="web-a")
        eventually(serving(port, ["a"]), what="back to dc1")
        load.wait_for_more(50)
        consul_agent.set_check("web-a", "critical")
        eventually(serving(port, ["b"]), what="dc2 while dc1's instance fails its check")
        consul_agent.set_check("web-a", "passing")
        eventually(serving(port, ["a"]), what="back to dc1 once it passes")
        load.wait_for_more(50)
    assert load.failures == []
    assert load.seen == {"a", "b"}
    after = node.proc_info()
    assert (after.reloads, after.workers) == (before.reloads, before.workers)


def test_with_haproxys_own_check_a_dead_local_instance_fails_over_before_consul_notices(
    consul_agent, dc2, backends, start_basenode
):
    a, b = backends.start("a"), backends.start("b")
    consul_agent.register("web", a.port, service_id="web-a")  # a TTL check of 10 minutes
    dc2.register("web", b.port, service_id="web-b")
    port = free_port()
    # A short connect timeout: a request that meets the dead instance is retried on dc2 after
    # min(timeout connect, 1 s), not after the template's 2 s.
    node = start_basenode(
        f"web:{port}/http;failover=dc2;check=tcp;check_interval=200ms;timeout_connect=200ms"
    )
    eventually(serving(port, ["a"]), timeout=30, what="dc1's instance")
    before = node.proc_info()

    a.close()  # dead, and Consul still says passing
    eventually(serving(port, ["b"]), timeout=30, what="dc2 once HAProxy's check marks dc1's instance down")
    revived = Backend("a", port=a.port)
    try:
        eventually(serving(port, ["a"]), timeout=30, what="back to dc1 once its check passes again")
    finally:
        revived.close()
    after = node.proc_info()
    assert (after.reloads, after.workers) == (before.reloads, before.workers)


def test_the_second_failover_datacenter_takes_over_when_the_first_has_no_instance(
    consul_agent, dc2, backends, start_basenode
):
    for third in datacenter(consul_agent, "dc3"):
        b, c = backends.start("b"), backends.start("c")
        dc2.register("web", b.port, service_id="web-b")
        third.register("web", c.port, service_id="web-c")
        port = free_port()
        node = start_basenode(f"web:{port}/http;failover=dc2+dc3")  # no instance in dc1 at all
        eventually(serving(port, ["b"]), timeout=30, what="dc2 first")
        before = node.proc_info()
        dc2.deregister("web-b")
        eventually(serving(port, ["c"]), what="dc3 once dc2 has none")
        dc2.register("web", b.port, service_id="web-b")
        eventually(serving(port, ["b"]), what="dc2 again")
        after = node.proc_info()
        assert (after.reloads, after.workers) == (before.reloads, before.workers)
