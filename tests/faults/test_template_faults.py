"""The HAProxy template edited to be invalid while basenode runs, then fixed."""

from __future__ import annotations

from basenode.template import render
from tests.support.backends import Load, get
from tests.support.basenode_run import serving
from tests.support.ports import free_port
from tests.support.waiting import eventually


def test_a_template_broken_while_running_keeps_the_last_good_config_until_it_is_fixed(
    tmp_path, consul_agent, backends, start_basenode
):
    """The --template file is edited twice into something unusable: first a Jinja syntax error
    (/health 503 `render:` with the file and line, basenode_render_errors_total grows), then a
    config HAProxy rejects (/health 503 `check:`, basenode_check_failures_total grows); an instance
    registered meanwhile gets no traffic, since no new config can be made. HAProxy serves the last
    good config throughout. Once the file is fixed, the held-back instance is routed, /health is
    200, and a registration after that is routed too."""
    template = tmp_path / "haproxy.cfg.j2"
    good = render.default_template().read_text()
    assert "balance roundrobin" in good
    template.write_text(good)
    a, b, c = backends.start("a"), backends.start("b"), backends.start("c")
    consul_agent.register("web", a.port, service_id="web-a")
    port = free_port()
    node = start_basenode(f"web:{port}/http", "--template", str(template))
    eventually(serving(port, ["a"]), timeout=30, what="a through basenode")
    eventually(node.healthy, timeout=30, what="/health 200 before the fault")
    live = node.settings.haproxy_cfg.read_text()
    render_errors = node.metric("basenode_render_errors_total")
    check_failures = node.metric("basenode_check_failures_total")

    with Load(port) as load:
        broken_line = len(good.splitlines()) + 1
        template.write_text(good + "{% if %}\n")
        eventually(
            lambda: [p for p in node.problems("render: ") if f"{template}:{broken_line}:" in p],
            what="/health 503 with a render problem naming the file and line",
        )
        assert node.metric("basenode_render_errors_total") > render_errors

        template.write_text(good.replace("balance roundrobin", "balance nonsense"))
        eventually(lambda: node.problems("check: "), what="/health 503 with a check problem")
        assert node.metric("basenode_check_failures_total") > check_failures
        consul_agent.register("web", b.port, service_id="web-b")
        eventually(
            lambda: node.metric("basenode_check_failures_total") > check_failures + 1,
            what="the registration's config to be rejected too",
        )
        load.wait_for_more(50)
        assert load.seen == {"a"} and load.failures == []
        assert get(port) == "a"
        assert node.settings.haproxy_cfg.read_text() == live

        template.write_text(good)
        eventually(serving(port, ["a", "b"]), what="the held-back instance once the template is fixed")
        eventually(node.healthy, what="/health 200 after the fix")
        consul_agent.register("web", c.port, service_id="web-c")
        eventually(serving(port, ["a", "b", "c"]), what="a registration after recovery to be routed")
    assert load.failures == []
    out = node.output()
    assert f"{template}:{broken_line}:" in out
    assert "haproxy -c rejected the new config" in out and "balance" in out
