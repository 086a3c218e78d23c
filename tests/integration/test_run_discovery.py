"""`basenode run` end to end: a real Consul agent, the zipapp supervising sync and HAProxy, real backends.

These are issue 3's acceptance points as a user meets them: register in Consul, reach the service
on 127.0.0.1:<route port>. The Consul agent is the test's own (`--no-consul`), so a test can stop
and start it while basenode keeps running.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.conftest import ZIPAPP
from tests.support.backends import Load, get
from tests.support.basenode_run import serving
from tests.support.ports import free_port, wait_for_port
from tests.support.waiting import eventually


def test_traffic_follows_the_catalog_without_any_haproxy_reload(consul_agent, backends, start_basenode):
    a, b = backends.start("a"), backends.start("b")
    consul_agent.register("web", a.port, service_id="web-a")
    consul_agent.register("web", b.port, service_id="web-b")
    port = free_port()
    node = start_basenode(f"web:{port}/http")
    eventually(serving(port, ["a", "b"]), timeout=30, what="both backends through basenode")
    before = node.proc_info()

    consul_agent.deregister("web-b")
    eventually(serving(port, ["a"]), what="deregistered b to stop receiving")
    consul_agent.register("web", b.port, service_id="web-b")
    eventually(serving(port, ["a", "b"]), what="re-registered b to receive again")
    consul_agent.set_check("web-a", "critical")
    eventually(serving(port, ["b"]), what="a with a failing check to stop receiving")
    consul_agent.set_check("web-a", "passing")
    eventually(serving(port, ["a", "b"]), what="a passing again to receive")

    after = node.proc_info()
    assert (after.reloads, after.workers) == (before.reloads, before.workers)
    assert "applied by runtime" in node.output()


def test_a_route_added_in_consul_kv_gets_a_frontend_and_leaves_with_its_key(
    consul_agent, backends, start_basenode
):
    a, c = backends.start("a"), backends.start("c")
    consul_agent.register("web", a.port, service_id="web-a")
    consul_agent.register("cache", c.port, service_id="cache-c")
    web_port, cache_port = free_port(), free_port()
    node = start_basenode(f"web:{web_port}/http")
    eventually(serving(web_port, ["a"]), timeout=30, what="the static route")
    reloads = node.proc_info().reloads

    consul_agent.kv_put("basenode/routes/cache", f"{cache_port}/http")
    eventually(serving(cache_port, ["c"]), what="the KV route's new frontend")
    assert node.proc_info().reloads == reloads + 1  # one seamless reload for the new frontend
    assert get(web_port) == "a"  # the static route kept serving

    consul_agent.kv_delete("basenode/routes/cache")

    def frontend_gone() -> bool:
        try:
            get(cache_port, timeout=1)
        except OSError:
            return True
        return False

    eventually(frontend_gone, what="the frontend to disappear with its key")
    assert get(web_port) == "a"


def test_haproxy_keeps_routing_while_consul_is_down_and_changes_flow_when_it_is_back(
    consul_agent,
    backends,
    start_basenode,
):
    a, b = backends.start("a"), backends.start("b")
    consul_agent.register("web", a.port, service_id="web-a")
    port = free_port()
    node = start_basenode(f"web:{port}/http")
    eventually(serving(port, ["a"]), timeout=30, what="a through basenode")

    consul_agent.stop()
    deadline = time.monotonic() + 3  # longer than wait_max and the first retry backoffs
    while time.monotonic() < deadline:
        assert get(port) == "a"  # the last known instances keep serving
        time.sleep(0.05)
    assert node.proc.poll() is None

    consul_agent.start()
    # The agent restores its services from its data dir, TTL checks critical until they report again.
    consul_agent.set_check("web-a", "passing")
    consul_agent.register("web", b.port, service_id="web-b")
    eventually(serving(port, ["a", "b"]), timeout=30, what="changes to flow again after the agent came back")


def test_hostile_registrations_change_nothing_and_are_named_in_one_warning_each(
    consul_agent,
    backends,
    start_basenode,
):
    a = backends.start("a")
    consul_agent.register("web", a.port, service_id="web-a")
    port = free_port()
    node = start_basenode(f"web:{port}/http")
    eventually(serving(port, ["a"]), timeout=30, what="a through basenode")
    rendered = node.settings.haproxy_cfg.read_text()

    hostile = {
        "web-newline-tag": {"Tags": ["ok\n    bind :1"]},
        "web-shell-address": {"Address": "1.2.3.4; rm"},
        "web-huge-tag": {"Tags": ["x" * 1_000_000]},
    }
    for service_id, fields in hostile.items():
        body = {"ID": service_id, "Name": "web", "Port": a.port, "Address": "127.0.0.1", **fields}
        consul_agent.register_raw(body)
    # Port 70000 and a name with a newline are refused by Consul itself; the unit tests of
    # snapshot validation cover them as values that reach us anyway.
    eventually(
        lambda: all(f"dropped instance '{sid}'" in node.output() for sid in hostile),
        what="one warning per hostile registration",
    )
    for _ in range(20):
        assert get(port) == "a"
    assert node.settings.haproxy_cfg.read_text() == rendered
    out = node.output()
    for service_id in hostile:
        assert out.count(f"dropped instance '{service_id}'") == 1, out[-3000:]
    assert len(max(out.splitlines(), key=len)) < 2000  # the 1 MB tag is not echoed into the log
    assert node.proc.poll() is None


def test_a_broken_template_is_refused_with_its_line_and_the_old_config_keeps_serving(
    tmp_path,
    consul_agent,
    backends,
    start_basenode,
):
    from basenode.template import render

    template = tmp_path / "haproxy.cfg.j2"
    template.write_text(render.default_template().read_text())
    a = backends.start("a")
    consul_agent.register("web", a.port, service_id="web-a")
    port = free_port()
    node = start_basenode(f"web:{port}/http", "--template", str(template))
    eventually(serving(port, ["a"]), timeout=30, what="a through basenode")
    rendered = node.settings.haproxy_cfg.read_text()

    lines = template.read_text().splitlines()
    broken = len(lines) + 1  # a line of its own after the last, outside any comment
    template.write_text("\n".join([*lines, "{% if %}"]) + "\n")
    eventually(lambda: f"{template}:{broken}:" in node.output(), what="the template error with its file:line")
    assert get(port) == "a"
    assert node.settings.haproxy_cfg.read_text() == rendered

    for command in ("check", "render"):
        result = node.cli(command, "--routes", f"web:{port}/http", "--template", str(template))
        assert result.returncode != 0
        assert f"{template}:{broken}:" in result.stderr, result.stderr

    template.write_text("\n".join([*lines, "{{ no_such_variable }}"]) + "\n")
    eventually(lambda: "no_such_variable" in node.output(), what="the undefined variable to be reported")
    result = node.cli("render", "--routes", f"web:{port}/http", "--template", str(template))
    assert result.returncode != 0 and f"{template}:{broken}:" in result.stderr, result.stderr
    assert get(port) == "a"
    assert node.settings.haproxy_cfg.read_text() == rendered


def test_200_membership_changes_under_load_fail_no_request(consul_agent, backends, start_basenode):
    pool = [backends.start(name) for name in ("a", "b", "c", "d")]
    for backend in pool:
        consul_agent.register("web", backend.port, service_id=f"web-{backend.name}")
    port = free_port()
    node = start_basenode(f"web:{port}/http")
    eventually(serving(port, ["a", "b", "c", "d"]), timeout=30, what="all four backends")
    wait_for_port(port)
    before = node.proc_info()
    with Load(port) as load:
        for i in range(200):
            backend = pool[i % 3]  # d always stays, so some instance is always there
            step = (i // 3) % 3
            if step == 0:
                consul_agent.deregister(f"web-{backend.name}")
            elif step == 1:
                consul_agent.register("web", backend.port, service_id=f"web-{backend.name}")
            else:
                consul_agent.set_check(f"web-{backend.name}", "critical" if i % 2 else "passing")
            if i % 20 == 0:
                load.wait_for_more(5)
        load.wait_for_more(20)
    assert load.failures == []
    assert load.ok > 200
    after = node.proc_info()
    assert (after.reloads, after.workers) == (before.reloads, before.workers)


def test_with_consul_unreachable_at_start_the_app_starts_after_the_grace_with_empty_routes(tmp_path):
    port = free_port()
    config = tmp_path / "basenode.toml"
    config.write_text("[watch]\nstartup_grace = 1\n")
    probe = (
        "import http.client, sys\n"
        f"c = http.client.HTTPConnection('127.0.0.1', {port}, timeout=5)\n"
        "c.request('GET', '/')\n"
        # One write: HAProxy's access log shares this stdout, and must not land inside the line.
        "sys.stdout.write(f'status {c.getresponse().status}\\n')\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BASENODE_", "CONSUL_"))},
        "CONSUL_HTTP_ADDR": f"127.0.0.1:{free_port()}",  # nothing listens there
    }
    argv = [sys.executable, str(ZIPAPP), "run", "--no-consul", "--config", str(config)]
    argv += ["--state-dir", str(tmp_path / "state"), "--routes", f"web:{port}/http"]
    out = subprocess.run(
        [*argv, "--", sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "status 503\n" in out.stdout  # a fast refusal, not a hang
    assert "no answer from Consul" in out.stderr


def test_sync_once_renders_and_writes_the_config_then_exits(consul_agent, backends, tmp_path):
    a = backends.start("a")
    consul_agent.register("web", a.port, service_id="web-a")
    state = tmp_path / "state"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BASENODE_", "CONSUL_"))},
        "CONSUL_HTTP_ADDR": consul_agent.http_addr,
        "BASENODE_CONFIG": os.devnull,
    }
    argv = [sys.executable, str(ZIPAPP), "sync", "--once", "--no-consul", "--state-dir", str(state)]
    out = subprocess.run(
        [*argv, "--routes", "web:9999/http"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    rendered = (state / "haproxy.cfg").read_text()
    assert f"127.0.0.1:{a.port}" in rendered and "bind 127.0.0.1:9999" in rendered
    assert (state / "haproxy.cfg").stat().st_mode & 0o777 == 0o600


def test_haproxy_access_log_reaches_basenode_output_prefixed_like_every_program(
    consul_agent, backends, start_basenode
):
    a, c = backends.start("a"), backends.start("c")
    consul_agent.register("web", a.port, service_id="web-a")
    consul_agent.register("db", c.port, service_id="db-c")
    web_port, db_port = free_port(), free_port()
    node = start_basenode(f"web:{web_port}/http,db:{db_port}")
    eventually(serving(web_port, ["a"]), timeout=30, what="a through basenode")
    eventually(serving(db_port, ["c"]), timeout=30, what="c through the tcp route")

    assert get(web_port, "/access-log-probe") == "a"

    def logged(fragment: str):
        return lambda: [line for line in node.output().splitlines() if fragment in line]

    (http_line,) = eventually(
        logged('"GET /access-log-probe HTTP/1.1"'), what="the request's access log line"
    )
    assert http_line.startswith("haproxy | 127.0.0.1:"), http_line
    assert " web web/" in http_line and " 200 " in http_line, http_line
    tcp_lines = eventually(logged(" db db/"), what="a tcp session's log line")
    assert all(line.startswith("haproxy | 127.0.0.1:") for line in tcp_lines), tcp_lines


def test_with_haproxy_log_off_requests_leave_no_line_in_basenode_output(
    consul_agent, backends, start_basenode
):
    a, b = backends.start("a"), backends.start("b")
    consul_agent.register("web", a.port, service_id="web-a")
    consul_agent.register("web", b.port, service_id="web-b")
    port = free_port()
    node = start_basenode(f"web:{port}/http", "--haproxy-log", "off")
    eventually(serving(port, ["a", "b"]), timeout=30, what="a and b through basenode")
    for _ in range(5):
        get(port, "/access-log-probe")

    # HAProxy's own messages still come through: a server going to maintenance is printed on its
    # stderr after the requests above were answered, so once it shows, their lines would have too.
    consul_agent.deregister("web-b")
    eventually(lambda: "is going DOWN for maintenance" in node.output(), what="HAProxy's own message")
    out = node.output()
    assert "haproxy | [WARNING]" in out
    assert "/access-log-probe" not in out
    assert "\n    log " not in node.settings.haproxy_cfg.read_text()
