"""The watch at cluster scale, against a real agent behind a counting proxy (issue: one dependency engine).

A node pays only for what it renders: one blocking query per dependency, none for a change elsewhere,
never more connections to the agent than watch.max_conns (Consul refuses a client past 200 by default),
a bounded number of threads whatever the number of dependencies, and no internal endpoint while the
dependencies fit the budget.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

from tests.conftest import require_binary
from tests.integration.test_templates import Basenode, has_text, text_of
from tests.support import procs
from tests.support.basenode_run import serving
from tests.support.consul_agent import ConsulAgent
from tests.support.consul_proxy import ConsulProxy
from tests.support.ports import free_port
from tests.support.waiting import eventually

SERVICES = 1000
NODES = 200


@pytest.fixture
def start_sync(tmp_path: Path) -> Iterator[Callable[[str, str], Basenode]]:
    """`dist/basenode sync --no-consul --no-haproxy` with a config (TMP: the test's directory)."""
    started: List[Basenode] = []

    def run(consul_addr: str, config: str) -> Basenode:
        started.append(Basenode(tmp_path, consul_addr, config))
        return started[-1]

    yield run
    for node in started:
        node.stop()


def register_catalog(
    agent: ConsulAgent, count: int = SERVICES, nodes: int = NODES, prefix: str = "svc"
) -> None:
    """`count` services, one instance each, spread over `nodes` catalog nodes."""
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: agent.catalog_register(f"node{i % nodes}", f"{prefix}{i}", 20000 + i), range(count)
            )
        )


def move(agent: ConsulAgent, i: int, port: int, nodes: int = NODES) -> None:
    """Service i's one instance (as register_catalog made it) re-registered at `port`."""
    service = {"ID": f"svc{i}-{20000 + i}", "Service": f"svc{i}", "Port": port}
    agent.request(
        "PUT",
        "/v1/catalog/register",
        {"Node": f"node{i % nodes}", "Address": "127.0.0.2", "Service": service},
    )


def internal_reads(proxy: ConsulProxy) -> int:
    return sum(n for path, n in proxy.per_path.requests.items() if path.startswith("/v1/internal/"))


def test_changes_to_services_a_node_does_not_route_cost_it_no_request_and_no_byte(
    consul_agent: ConsulAgent, backends, start_basenode
):
    agent = consul_agent
    register_catalog(agent)
    a, b = backends.start("a"), backends.start("b")
    agent.register("web", a.port, service_id="web-a")
    proxy = ConsulProxy(agent.http_addr)
    try:
        port = free_port()
        start_basenode(f"web:{port}/http", consul_addr=proxy.http_addr)
        eventually(serving(port, ["a"]), timeout=30, what="a through basenode")
        time.sleep(0.5)  # let the first reads settle into their blocking queries
        counts = proxy.per_path
        requests, sent = sum(counts.requests.values()), sum(counts.bytes_sent.values())

        for i in range(100):  # the same instance re-registered at another port: a real change to each
            move(agent, i, 30000 + i)
        eventually(lambda: agent.health("svc99")[0]["Service"]["Port"] == 30099, what="the last change")
        time.sleep(1.0)  # room for any wake the changes would cause

        assert sum(counts.requests.values()) == requests, dict(counts.requests)
        assert sum(counts.bytes_sent.values()) == sent
        agent.register("web", b.port, service_id="web-b")  # the routed service still reaches traffic
        eventually(serving(port, ["a", "b"]), timeout=10, what="b through basenode")
        assert internal_reads(proxy) == 0
    finally:
        proxy.close()


def test_a_template_over_a_thousand_services_renders_within_the_connection_budget(
    tmp_path: Path, consul_agent: ConsulAgent, start_sync
):
    agent = consul_agent  # Consul's default limits: 200 connections per client address
    register_catalog(agent)
    (tmp_path / "all.j2").write_text(
        "{% for n in range(1000) %}{% for i in service('svc' ~ n) %}"
        "{{ i.id }} {{ i.port }}\n{% endfor %}{% endfor %}"
    )
    proxy = ConsulProxy(agent.http_addr)
    try:
        node = start_sync(
            proxy.http_addr,
            """
            [templates.all]
            source = "TMP/all.j2"
            destination = "TMP/all.txt"
            """,
        )
        out = tmp_path / "all.txt"
        eventually(lambda: len(text_of(out).splitlines()) == SERVICES, timeout=60, what="all 1,000 rendered")
        assert procs.connections_to(node.proc.pid, proxy.port) <= 100  # watch.max_conns' default
        assert procs.threads(node.proc.pid) <= 10

        code, doc = node.get("/status")
        assert code == 200 and doc["watch"]["queries"] == SERVICES
        assert doc["watch"]["peak_connections"] <= 100
        assert len(doc["watch"]["catalog_watch"]) == SERVICES - 99  # past the budget, on the catalog watch
        assert node.get("/health")[0] == 200
        members = subprocess.run(
            [require_binary("consul"), "members", f"-http-addr={agent.http_addr}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert members.returncode == 0, members.stderr
        agent.register("unrelated", 9999)  # the agent still takes registrations

        move(agent, 7, 40007)  # one of those on the catalog watch
        move(agent, 1, 40001)  # one with its own query (svc0, svc1, svc10, ... sort first)
        eventually(lambda: "svc7-20007 40007" in text_of(out), what="the change to svc7 rendered")
        eventually(lambda: "svc1-20001 40001" in text_of(out), what="the change to svc1 rendered")
    finally:
        proxy.close()


def test_a_service_routed_by_haproxy_and_used_by_a_template_is_one_blocking_query(
    tmp_path: Path, consul_agent: ConsulAgent, backends, start_basenode
):
    agent = consul_agent
    a = backends.start("a")
    agent.register("web", a.port, service_id="web-a")
    template = tmp_path / "web.j2"
    template.write_text("{% for i in service('web') %}{{ i.endpoint }}\n{% endfor %}")
    out = tmp_path / "web.txt"
    proxy = ConsulProxy(agent.http_addr)
    try:
        port = free_port()
        start_basenode(f"web:{port}", "--template-spec", f"{template}:{out}", consul_addr=proxy.http_addr)
        eventually(serving(port, ["a"]), timeout=30, what="a through basenode")
        eventually(has_text(out, f"127.0.0.1:{a.port}\n"), what="the template rendered")
        path = "/v1/health/service/web"
        eventually(lambda: proxy.per_path.in_flight[path] == 1, what="the blocking query on web")
        assert proxy.per_path.max_in_flight[path] == 1
        assert internal_reads(proxy) == 0
    finally:
        proxy.close()


def test_past_the_budget_services_ride_on_the_catalog_watch_and_still_follow_changes(
    tmp_path: Path, consul_agent: ConsulAgent, start_sync
):
    agent = consul_agent
    register_catalog(agent, count=20, nodes=5)
    (tmp_path / "t.j2").write_text(
        "{% for n in range(20) %}{% for i in service('svc' ~ n) %}"
        "{{ i.id }} {{ i.port }}\n{% endfor %}{% endfor %}"
    )
    proxy = ConsulProxy(agent.http_addr)
    try:
        node = start_sync(
            proxy.http_addr,
            """
            [watch]
            max_conns = 5
            [templates.t]
            source = "TMP/t.j2"
            destination = "TMP/t.txt"
            """,
        )
        out = tmp_path / "t.txt"
        eventually(lambda: len(text_of(out).splitlines()) == 20, timeout=30, what="all 20 rendered")
        _, doc = node.get("/status")
        assert doc["watch"]["catalog_watch"] == sorted(f"svc{n}" for n in range(20))[4:]
        assert doc["watch"]["peak_connections"] <= 5
        assert procs.connections_to(node.proc.pid, proxy.port) <= 5
        assert internal_reads(proxy) > 0
        move(agent, 19, 40019, nodes=5)
        eventually(lambda: "svc19-20019 40019\n" in text_of(out), what="the change on the catalog watch")
    finally:
        proxy.close()
