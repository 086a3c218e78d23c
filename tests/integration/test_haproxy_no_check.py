"""`basenode run` against a real Consul agent: which catalog changes cost a `haproxy -c`.

What users rely on (issue 11): an instance registered or deregistered reaches HAProxy through the
runtime API alone, with no `haproxy -c` process and no reload; a new route is checked before its
seamless reload; a server the runtime API refuses falls back to check + reload with no failed
request. The checks are counted from outside: `--haproxy-bin` is a wrapper that logs every `-c`.
"""

from __future__ import annotations

from basenode.output import haproxy
from basenode.template import render
from tests.conftest import require_binary
from tests.support.backends import Load
from tests.support.basenode_run import serving
from tests.support.haproxy_proc import CountingHAProxy
from tests.support.ports import free_port
from tests.support.waiting import eventually


def routed(node, backend: str, port: int):
    """A probe: HAProxy's runtime state has a server of `backend` at `port` taking traffic."""

    def probe() -> bool:
        try:
            state = haproxy.show_servers_state(node.settings.haproxy_stats_socket, backend)
        except haproxy.RuntimeAPIError:
            return False
        return any(s.port == port and s.ready for s in state.get(backend, {}).values())

    return probe


def test_a_hundred_instance_changes_spawn_no_haproxy_check_and_a_kv_route_does(
    tmp_path, consul_agent, backends, start_basenode
):
    counting = CountingHAProxy(tmp_path, require_binary("haproxy"))
    a, b = backends.start("a"), backends.start("b")
    consul_agent.register("web", a.port, service_id="web-a")
    port = free_port()
    node = start_basenode(f"web:{port}/http", "--haproxy-bin", str(counting.path))
    eventually(serving(port, ["a"]), timeout=30, what="a through basenode")
    checks = counting.checks()
    assert checks >= 1  # the first config was checked before HAProxy started
    before = node.proc_info()

    for i in range(100):
        if i % 2 == 0:
            consul_agent.register("web", b.port, service_id="web-b")
            eventually(routed(node, "web", b.port), what=f"change {i}: b in HAProxy's runtime state")
        else:
            consul_agent.deregister("web-b")
            eventually(lambda: not routed(node, "web", b.port)(), what=f"change {i}: b out of HAProxy")
    assert counting.checks() == checks  # 100 changes, not one `haproxy -c`
    after = node.proc_info()
    assert (after.reloads, after.workers) == (before.reloads, before.workers)
    assert node.output().count("applied by runtime") >= 100

    cache, cache_port = backends.start("c"), free_port()
    consul_agent.register("cache", cache.port, service_id="cache-c")
    consul_agent.kv_put("basenode/routes/cache", f"{cache_port}/http")
    eventually(serving(cache_port, ["c"]), timeout=30, what="the KV route's new frontend")
    assert counting.checks() >= checks + 1  # a new route is checked before its reload
    assert node.proc_info().reloads == before.reloads + 1


def test_an_instance_the_runtime_api_refuses_is_checked_and_reloaded_with_no_failed_request(
    tmp_path, consul_agent, backends, start_basenode
):
    """A user template balancing `web` with static-rr: HAProxy refuses `add server` there, so a new
    instance takes the check + seamless reload path instead, and no request under load fails."""
    counting = CountingHAProxy(tmp_path, require_binary("haproxy"))
    template = tmp_path / "static-rr.cfg.j2"
    template.write_text(
        render.default_template().read_text().replace("balance roundrobin", "balance static-rr")
    )
    a, b = backends.start("a"), backends.start("b")
    consul_agent.register("web", a.port, service_id="web-a")
    port = free_port()
    node = start_basenode(
        f"web:{port}/http", "--haproxy-bin", str(counting.path), "--template", str(template)
    )
    eventually(serving(port, ["a"]), timeout=30, what="a through basenode")
    checks, reloads = counting.checks(), node.proc_info().reloads

    with Load(port) as load:
        load.wait_for_more(20)
        consul_agent.register("web", b.port, service_id="web-b")
        eventually(serving(port, ["a", "b"]), timeout=30, what="b routed after the fallback reload")
        load.wait_for_more(50)
    assert load.failures == [], load.failures[:5]
    assert counting.checks() == checks + 1
    assert node.proc_info().reloads == reloads + 1
    assert "runtime API apply failed, checking and reloading instead" in node.output()
