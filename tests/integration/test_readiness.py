"""Readiness: a program counts as up once its condition holds, for depends_on and for registration.

Real processes under `dist/basenode run`: a "database" that opens its port only after 2 s, a
program that depends on it, and an application registered in a real Consul agent only once ready.
Each dependent checks, as it starts, what it relies on, and says so: the order is proven by what
the processes saw, not by timing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.support.consul_agent import ConsulAgent
from tests.support.ports import free_port
from tests.support.waiting import eventually

# Listens on PORT only after 2 s (what a database replaying its log looks like from outside).
SLOW_LISTENER = """
import socket, sys, time
time.sleep(2)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
print("listen" "ing", flush=True)
while True:
    s.accept()[0].close()
"""

# Starts only once it can reach PORT; says whether it could at its very start.
REACHES = """
import socket, sys, time
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()
    print("reached at start", flush=True)
except OSError as e:
    print("refused at start:", e, flush=True)
time.sleep(1000)
"""


def _toml_list(*argv: str) -> str:
    return json.dumps(list(argv))


def test_a_dependent_of_a_ready_tcp_program_starts_only_once_its_port_opens(supervisor):
    port = free_port()
    config = f"""
[programs.db]
command = {_toml_list(sys.executable, "-c", SLOW_LISTENER, str(port))}
startsecs = 0
ready_tcp = {port}

[programs.web]
command = {_toml_list(sys.executable, "-c", REACHES, str(port))}
startsecs = 0
depends_on = ["db"]
"""
    node = supervisor(config, "sleep", "600")
    # While db runs but its port is closed, web waits (and the app, with no condition, runs).
    waiting = eventually(
        lambda: (lambda p: p if p.get("db", {}).get("state") == "running" else None)(node.programs()),
        what="db running",
    )
    if "listening" not in node.output():
        assert waiting["db"]["ready"] is False and waiting["web"]["state"] == "waiting", waiting
    eventually(lambda: "web | reached at start" in node.output(), timeout=30, what="web started")
    out = node.output()
    assert "refused at start" not in out
    assert out.index("db | listening") < out.index("supervise info: web: started")
    assert f"db: ready: ready_tcp 127.0.0.1:{port}" in out
    programs = node.programs()
    assert programs["db"]["ready"] is True and programs["web"]["state"] == "running"


# The application: opens its service port after 2 s; just before, it asks the agent whether it
# is registered already (it must not be: it cannot serve yet).
APP = """
import json, socket, sys, time, urllib.request
time.sleep(2)
with urllib.request.urlopen(sys.argv[1] + "/v1/agent/services", timeout=5) as r:
    print("registered before listening:", sys.argv[3] in json.load(r), flush=True)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[2])))
s.listen(16)
while True:
    s.accept()[0].close()
"""


def _run_app(supervisor, consul_agent: ConsulAgent, name: str, config: str):
    port = free_port()
    env = {"CONSUL_HTTP_ADDR": consul_agent.http_addr, "SERVICE_NAME": name, "SERVICE_PORT": str(port)}
    node = supervisor(
        config.format(port=port), sys.executable, "-c", APP, consul_agent.url, str(port), name, env=env
    )
    return node, port


def test_the_application_is_registered_in_consul_only_once_its_ready_tcp_holds(
    supervisor, consul_agent: ConsulAgent
):
    node, port = _run_app(supervisor, consul_agent, "ready-shop", "[app]\nready_tcp = {port}\n")
    eventually(lambda: "registered before listening:" in node.output(), timeout=30, what="the app's look")
    entries = eventually(lambda: consul_agent.health("ready-shop"), timeout=30, what="ready-shop registered")
    assert entries[0]["Service"]["Port"] == port
    out = node.output()
    assert "registered before listening: False" in out
    assert f"app: ready: ready_tcp 127.0.0.1:{port}" in out
    assert node.cli("health").returncode == 0


def test_without_a_readiness_condition_the_application_is_registered_at_its_start(
    supervisor, consul_agent: ConsulAgent
):
    # The control for the test above: the same application, no [app] readiness.
    node, _ = _run_app(supervisor, consul_agent, "eager-shop", "")
    eventually(lambda: "registered before listening:" in node.output(), timeout=30, what="the app's look")
    assert "registered before listening: True" in node.output()


def test_health_fails_while_the_application_runs_but_is_not_ready(supervisor, tmp_path: Path):
    flag = tmp_path / "app-ready"
    node = supervisor(f'[app]\nready_file = "{flag}"\n', "sleep", "600")
    eventually(lambda: node.programs().get("app", {}).get("state") == "running", what="the app running")
    health = node.cli("health")
    assert health.returncode == 1
    assert "unhealthy: programs: the application runs but is not ready yet" in health.stderr
    flag.touch()
    eventually(lambda: node.cli("health").returncode == 0, what="health to pass once ready")
