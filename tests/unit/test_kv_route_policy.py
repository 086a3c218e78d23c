"""What a KV route may ask for: allowed ports, ports this node needs, a cap on their number."""

from __future__ import annotations

import pytest

from basenode.config import Agent, ConfigError, ConsulHTTP, Flags, Route, Service, Settings, load
from basenode.routes import KVRoutePolicy, kv_route_policy, merge_routes

PREFIX = "basenode/routes/"


def test_a_kv_route_outside_the_allowed_ports_or_on_a_taken_one_is_skipped_naming_the_key():
    policy = KVRoutePolicy(ports=(9000, 9999), limit=10, taken={9500: "the status endpoint (status_addr)"})
    routes, warnings = merge_routes(
        (), {PREFIX + "low": "80", PREFIX + "st": "9500", PREFIX + "ok": "9001"}, policy=policy
    )
    assert [r.service for r in routes] == ["ok"]
    assert any("basenode/routes/low" in w and "outside kv_route_ports 9000-9999" in w for w in warnings)
    assert any("basenode/routes/st" in w and "taken by the status endpoint" in w for w in warnings)


def test_kv_routes_past_the_limit_are_skipped_and_static_routes_do_not_count():
    policy = KVRoutePolicy(limit=2)
    kv = {PREFIX + f"s{i}": str(10000 + i) for i in range(4)}
    routes, warnings = merge_routes((Route("web", 9000),), kv, policy=policy)
    assert [r.service for r in routes] == ["s0", "s1", "web"]
    assert sum("kv_route_limit (2)" in w for w in warnings) == 2


def test_the_node_knows_its_agents_ports_status_port_and_registered_services():
    settings = Settings(
        status_addr=("127.0.0.1", 8089),
        consul_http=ConsulHTTP(addr="127.0.0.1:8500"),
        agent=Agent(extra_args=("-dns-port=8653", "-bind=127.0.0.1")),
        services=(Service(name="api", port=8080),),
    )
    taken = kv_route_policy(settings).taken
    assert {8089, 8500, 8300, 8301, 8302, 8502, 8653, 8080} <= set(taken) and 8600 not in taken
    assert "api" in taken[8080]


def test_kv_route_options_come_from_flag_environment_and_file_with_errors_naming_the_source(tmp_path):
    config = tmp_path / "basenode.toml"
    config.write_text('kv_route_ports = "9000-9100"\nkv_route_limit = 7\n')
    settings = load(Flags(config=str(config)), {})
    assert (settings.kv_route_ports, settings.kv_route_limit) == ((9000, 9100), 7)
    settings = load(Flags(config=str(config), kv_route_limit="3"), {"BASENODE_KV_ROUTE_PORTS": "20000-30000"})
    assert (settings.kv_route_ports, settings.kv_route_limit) == ((20000, 30000), 3)
    with pytest.raises(ConfigError, match=r'BASENODE_KV_ROUTE_PORTS: .*got "9100-9000"'):
        load(Flags(config=str(config)), {"BASENODE_KV_ROUTE_PORTS": "9100-9000"})
