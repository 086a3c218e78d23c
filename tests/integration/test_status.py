"""The operator's surface of a running basenode: /health, /status, /metrics, `status`, `health`,
the control socket, SIGHUP reload and JSON logs. Real Consul agent, real HAProxy, the zipapp."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

from basenode import control
from basenode.config import ConsulHTTP, Settings
from basenode.status import document
from basenode.status.state import SyncState
from tests.conftest import ZIPAPP
from tests.support.basenode_run import serving
from tests.support.ports import free_port
from tests.support.waiting import eventually


def healthy(node) -> bool:
    try:
        return node.health()[0] == 200
    except OSError:  # the sync loop, which serves the endpoint, is not listening yet
        return False


def programs(node) -> dict:
    """From PID 1's control socket, which answers while the sync loop (the endpoint) restarts."""
    return {p["name"]: p for p in control.programs(node.state_dir) or ()}


def test_status_health_and_metrics_describe_the_running_node(consul_agent, backends, start_basenode):
    a = backends.start("a")
    consul_agent.register("web", a.port, service_id="web-a")
    consul_agent.register("web", backends.start("sick").port, service_id="web-sick")
    consul_agent.set_check("web-sick", "critical")
    port = free_port()
    node = start_basenode(f"web:{port}/http")
    eventually(serving(port, ["a"]), timeout=30, what="the healthy instance through basenode")
    eventually(lambda: healthy(node), timeout=30, what="/health to pass")

    doc = node.status()
    assert doc["healthy"] is True and doc["problems"] == []
    assert doc["routes"] == [{"service": "web", "port": port, "mode": "http", "healthy": 1, "total": 2}]
    assert {"sync", "haproxy"} <= {p["name"] for p in doc["programs"]}
    assert all(p["state"] == "running" and p["pid"] for p in doc["programs"])
    assert doc["consul"]["reachable"] and doc["consul"]["leader"] and doc["consul"]["last_index"]
    assert doc["sync"]["count"] >= 1 and doc["last_error"] is None

    metrics = node.metrics()
    assert metrics["basenode_healthy"] == 1
    assert metrics['basenode_route_instances{service="web"}'] == 1
    assert metrics['basenode_program_up{program="haproxy"}'] == 1
    assert metrics["basenode_syncs_total"] >= 1
    assert metrics["basenode_sync_duration_seconds_count"] == metrics["basenode_syncs_total"]
    assert metrics["basenode_last_sync_timestamp_seconds"] > 0

    table = node.cli("status")
    assert table.returncode == 0, table.stderr
    assert "healthy" in table.stdout.splitlines()[0]
    assert any(line.split()[:2] == ["web", str(port)] for line in table.stdout.splitlines())
    assert max(len(line) for line in table.stdout.splitlines()) < 100
    as_json = node.cli("status", "--json")
    assert set(json.loads(as_json.stdout)) == set(doc)
    assert node.cli("health").returncode == 0


def test_health_is_503_with_the_reason_while_consul_is_down_and_recovers(
    consul_agent, backends, start_basenode
):
    consul_agent.register("web", backends.start("a").port, service_id="web-a")
    port = free_port()
    node = start_basenode(f"web:{port}")
    eventually(lambda: healthy(node), timeout=30, what="/health to pass")
    consul_agent.stop()
    _, body = eventually(lambda: (r := node.health())[0] == 503 and r, timeout=30, what="/health 503")
    assert any(p.startswith("consul: ") for p in body["problems"]), body
    assert node.cli("health").returncode == 1
    assert serving(port, ["a"])(), "routing stays on the last good config"
    consul_agent.start()
    eventually(lambda: healthy(node), timeout=60, what="/health to pass again")


def test_status_and_health_say_so_when_no_basenode_runs(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASENODE_")}
    addr = f"127.0.0.1:{free_port()}"
    for command in ("status", "health"):
        result = subprocess.run(
            [sys.executable, str(ZIPAPP), command, "--status-addr", addr, "--config", os.devnull],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1
        assert f"no status endpoint answers at {addr}" in result.stderr


CONFIG = """
[programs.hup]
command = ["sh", "-c", "trap 'echo hup >> {marker}' HUP; echo ok > {marker}; while :; do sleep 0.1; done"]
startsecs = 0
{extra}
"""


def test_control_socket_is_owner_only_and_signals_and_restarts_programs(
    consul_agent, start_basenode, tmp_path
):
    marker = tmp_path / "marker"
    config_file = tmp_path / "basenode.toml"
    config_file.write_text(CONFIG.format(marker=marker, extra=""))
    node = start_basenode(f"web:{free_port()}", "--config", str(config_file))
    sock = node.state_dir / control.SOCKET_NAME
    eventually(lambda: control.programs(node.state_dir), timeout=30, what="the control socket")
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600

    eventually(lambda: programs(node).get("hup", {}).get("state") == "running", timeout=30, what="hup runs")
    before = programs(node)["hup"]["pid"]
    eventually(marker.exists, timeout=10, what="the trap in place")  # else HUP would end the shell
    assert control.request(node.state_dir, {"op": "signal", "program": "hup", "signal": "HUP"}) == {
        "ok": True,
        "sent": True,
    }
    eventually(lambda: marker.exists() and "hup" in marker.read_text(), timeout=10, what="the HUP")

    assert control.request(node.state_dir, {"op": "restart", "program": "hup"}) == {"ok": True}
    eventually(lambda: programs(node)["hup"]["pid"] not in (None, before), timeout=20, what="a new pid")
    assert programs(node)["hup"]["restarts"] == 1

    bad = control.request(node.state_dir, {"op": "signal", "program": "nope", "signal": "HUP"})
    assert bad["ok"] is False and "nope" in bad["error"]


SLOW_STARTER = """
[programs.slow]
command = ["sh", "-c", "sleep 0.5; trap 'echo hup >> {marker}' HUP; while :; do sleep 0.1; done"]
startsecs = 1.5
"""


def test_a_reload_signal_to_a_program_still_starting_is_held_until_it_is_up(
    consul_agent, start_basenode, tmp_path
):
    """A template's reload (if_running) must not kill a program that has not set its handler yet."""
    marker = tmp_path / "marker"
    config_file = tmp_path / "basenode.toml"
    config_file.write_text(SLOW_STARTER.format(marker=marker))
    node = start_basenode(f"web:{free_port()}", "--config", str(config_file))
    eventually(lambda: programs(node).get("slow", {}).get("state") == "starting", timeout=30, what="slow")
    reload = {"op": "signal", "program": "slow", "signal": "HUP", "if_running": True}
    assert control.request(node.state_dir, reload) == {"ok": True, "sent": False}  # held
    eventually(lambda: marker.exists() and marker.read_text() == "hup\n", timeout=10, what="the held HUP")
    slow = programs(node)["slow"]
    assert (slow["state"], slow["restarts"]) == ("running", 0)  # the shell's default action never ran

    assert control.request(node.state_dir, {**reload, "program": "nope"})["ok"] is False


def test_sighup_applies_a_changed_config_and_refuses_an_invalid_one(consul_agent, start_basenode, tmp_path):
    marker = tmp_path / "marker"
    config_file = tmp_path / "basenode.toml"
    config_file.write_text(CONFIG.format(marker=marker, extra=""))
    node = start_basenode(f"web:{free_port()}", "--config", str(config_file))
    eventually(lambda: programs(node).get("hup", {}).get("state") == "running", timeout=30, what="hup runs")
    sync_pid = programs(node)["sync"]["pid"]

    added = '[programs.added]\ncommand = ["sleep", "1000"]\nstartsecs = 0\n'
    config_file.write_text(CONFIG.format(marker=marker, extra=added))
    node.proc.send_signal(signal.SIGHUP)
    eventually(lambda: programs(node).get("added", {}).get("state") == "running", timeout=20, what="added")
    # The config file changed, so the sync loop (which reads it) started again with it.
    eventually(lambda: programs(node)["sync"]["pid"] not in (None, sync_pid), timeout=20, what="sync restart")
    hup_pid = programs(node)["hup"]["pid"]

    config_file.write_text(CONFIG.format(marker=marker, extra=added) + "\n[programs.broken]\nnope = 1\n")
    node.proc.send_signal(signal.SIGHUP)
    eventually(lambda: "reload refused" in node.output(), timeout=20, what="the refusal in the log")
    assert "programs.broken" in node.output()
    assert set(programs(node)) >= {"hup", "added"} and "broken" not in programs(node)
    assert programs(node)["hup"]["pid"] == hup_pid

    config_file.write_text(CONFIG.format(marker=marker, extra=""))
    node.proc.send_signal(signal.SIGHUP)
    eventually(lambda: "added" not in programs(node), timeout=20, what="the removed program to go")
    assert programs(node)["hup"]["pid"] == hup_pid, "an unchanged program is not touched"
    assert node.proc.poll() is None


def test_a_template_added_by_sighup_reloads_its_running_program_without_restarting_it(
    consul_agent, start_basenode, tmp_path
):
    """The new template makes `hup` wait for the sync loop at its next start (depends_on); the running
    one is not restarted for that, and gets the template's first write as a reload signal."""
    marker = tmp_path / "marker"
    config_file = tmp_path / "basenode.toml"
    config_file.write_text(CONFIG.format(marker=marker, extra=""))
    node = start_basenode(f"web:{free_port()}", "--config", str(config_file))
    eventually(lambda: programs(node).get("hup", {}).get("state") == "running", timeout=30, what="hup runs")
    eventually(marker.exists, timeout=10, what="the trap in place")
    hup_pid = programs(node)["hup"]["pid"]

    (tmp_path / "hup.conf.j2").write_text('greeting = {{ kv("hup-test/greeting", "hello") }}\n')
    template = f"""
[templates.hup]
source = "{tmp_path}/hup.conf.j2"
destination = "{tmp_path}/hup.conf"
reload_program = "hup"
"""
    config_file.write_text(CONFIG.format(marker=marker, extra=template))
    node.proc.send_signal(signal.SIGHUP)
    eventually(lambda: (tmp_path / "hup.conf").exists(), timeout=30, what="the new template's file")
    eventually(lambda: "hup" in marker.read_text(), timeout=10, what="the reload signal for its write")
    hup = programs(node)["hup"]
    assert (hup["pid"], hup["restarts"]) == (hup_pid, 0)
    assert "hup: changed in the config" not in node.output()


def test_json_logs_wrap_every_line_with_its_program(consul_agent, backends, start_basenode, tmp_path):
    consul_agent.register("web", backends.start("a").port, service_id="web-a")
    port = free_port()
    node = start_basenode(
        f"web:{port}",
        "--log-format",
        "json",
        "--app-output",
        "json",
        "--",
        "sh",
        "-c",
        "echo from-app; sleep 1000",
    )
    eventually(lambda: healthy(node), timeout=30, what="/health to pass")
    # The wrapped line itself: "from-app" alone is in basenode's log of the command it started.
    eventually(lambda: '"message":"from-app"' in node.output(), timeout=10, what="the app's line")
    entries = [json.loads(line) for line in node.output().splitlines() if line.strip()]
    for entry in entries:
        assert {"time", "level", "component", "message"} <= set(entry), entry
    app = [e for e in entries if e["message"] == "from-app"]
    assert app and app[0]["component"] == "app" and app[0]["fields"] == {"program": "app", "stream": "stdout"}
    # basenode's own children log JSON themselves and are tagged, not wrapped twice.
    sync = [e for e in entries if e.get("fields", {}).get("program") == "sync"]
    assert sync and all(not e["message"].startswith("{") for e in sync)
    assert any(e["component"] == "supervise" for e in entries)


def test_log_level_warning_hides_info_lines(consul_agent, start_basenode):
    node = start_basenode(f"web:{free_port()}", "--log-level", "warning")
    eventually(lambda: healthy(node), timeout=30, what="/health to pass")
    own = [line for line in node.output().splitlines() if line.startswith("basenode ")]
    assert not [line for line in own if " info: " in line], own


def test_state_dir_holds_no_status_file_a_full_disk_could_freeze(consul_agent, start_basenode):
    node = start_basenode(f"web:{free_port()}")
    eventually(lambda: healthy(node), timeout=30, what="/health to pass")
    names = {p.name for p in Path(node.state_dir).iterdir()}
    assert "sync-state.json" not in names and control.SOCKET_NAME in names


def test_a_status_request_leaves_no_connection_to_the_agent_open(consul_agent, tmp_path):
    # The sync loop answers a scraper every few seconds for months. Each request must close what it
    # opened (its probe of the agent), not leave it to a garbage collector that an idle process may
    # not run for hours: the soak saw the loop's open sockets grow with every scrape. Collection is
    # off here, so whatever a request does not close itself stays open and is counted.
    settings = Settings(state_dir=tmp_path, consul_http=ConsulHTTP(addr=consul_agent.http_addr))
    agent_port = consul_agent.ports["http"]

    def sockets_to_the_agent() -> int:
        """This process's TCP sockets connected to the agent (other threads' fds do not count)."""
        ours = set()
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target.startswith("socket:["):
                    ours.add(target[8:-1])
        count = 0
        for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    if int(fields[2].rsplit(":", 1)[1], 16) == agent_port and fields[9] in ours:
                        count += 1
        return count

    gc.collect()
    gc.disable()
    try:
        before = sockets_to_the_agent()
        for _ in range(5):
            assert document.collect(settings, SyncState(), None)["consul"]["reachable"] is True
        after = sockets_to_the_agent()
    finally:
        gc.enable()
    assert after == before == 0
