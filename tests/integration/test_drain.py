"""The drain on stop: deregistered at once, the app stopped once its port went quiet and its
connections finished, or at the `--drain` upper bound. Real Consul agent, real `basenode run`,
the app a real TCP server on its SERVICE_PORT; all of them, and the test's own connections, in a
network namespace of their own (tests/support/netns.py), as a container has one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Tuple

import pytest

from tests.conftest import ZIPAPP
from tests.support.consul_agent import ConsulAgent
from tests.support.netns import own_network_namespace
from tests.support.ports import free_port
from tests.support.waiting import eventually

# The app: a TCP server on argv[1] that holds every connection until its client closes it (echoing
# what it reads); it records when each client closed, and on SIGTERM what the agent had registered.
APP = r"""
import json, signal, socket, sys, threading, time, urllib.request
port, agent, record = int(sys.argv[1]), sys.argv[2], sys.argv[3]
seen = {"closed": []}
def on_term(*_):
    with urllib.request.urlopen(agent + "/v1/agent/services", timeout=5) as r:
        seen["services_at_term"] = sorted(json.load(r))
    seen["term"] = time.time()
    with open(record, "w") as f:
        json.dump(seen, f)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
def serve(conn):
    with conn:
        while True:
            data = conn.recv(4096)
            if not data:
                break
            conn.sendall(data)
    seen["closed"].append(time.time())
listener = socket.create_server(("127.0.0.1", port))
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

DRAIN_LINE = re.compile(
    r"drain ended after ([0-9.]+) s: (quiet|open connections finished|upper bound reached)"
)


class Node:
    """`basenode run --no-consul --no-haproxy` with the app above registered as `shop`."""

    def __init__(self, agent: ConsulAgent, tmp: Path, *flags: str) -> None:
        self.agent, self.port = agent, free_port()
        self.record, self.log = tmp / "app.json", tmp / "basenode.log"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("BASENODE_", "CONSUL_", "SERVICE_"))},
            "BASENODE_CONFIG": os.devnull,
            "CONSUL_HTTP_ADDR": agent.http_addr,
            "SERVICE_NAME": "shop",
            "SERVICE_PORT": str(self.port),
        }
        argv = [sys.executable, str(ZIPAPP), "run", "--no-consul", "--no-haproxy", *flags, "--"]
        app = [sys.executable, "-c", APP, str(self.port), agent.url, str(self.record)]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([*argv, *app], env=env, stdout=out, stderr=subprocess.STDOUT)
        eventually(lambda: agent.health("shop"), timeout=20, what="shop registered")

    def connect(self) -> socket.socket:
        conn = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        conn.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        return conn

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self) -> Tuple[str, float, dict]:
        """basenode's exit: the drain's reason and length from its log, and what the app recorded."""
        assert self.proc.wait(timeout=60) == 0, self.text()
        found = DRAIN_LINE.search(self.text())
        assert found, self.text()
        return found.group(2), float(found.group(1)), json.loads(self.record.read_text())

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(autouse=True)
def own_netns() -> Iterator[None]:
    """First of this module's fixtures: the agent and everything else start inside."""
    with own_network_namespace():
        yield


@pytest.fixture()
def node(zipapp, tmp_path: Path, consul_agent: ConsulAgent) -> Iterator:
    started = []

    def start(*flags: str) -> Node:
        n = Node(consul_agent, tmp_path, *flags)
        started.append(n)
        return n

    yield start
    for n in started:
        n.kill()


def test_no_traffic_at_all_ends_the_drain_after_drain_quiet(node, consul_agent: ConsulAgent):
    n = node("--drain", "30", "--drain-quiet", "0.3")
    n.stop()
    reason, took, app = n.wait()
    assert reason == "quiet"
    assert 0.3 <= took < 30  # quiet for drain_quiet, and no longer than that needs
    assert app["services_at_term"] == []  # deregistered before the app was asked to stop
    assert consul_agent.health("shop") == []


def test_a_connection_held_open_keeps_the_drain_going_until_it_closes(node):
    n = node("--drain", "60", "--drain-quiet", "0.3")
    held = n.connect()
    n.stop()
    # Well past drain_quiet, the app still serves the open connection: it has not been stopped.
    time.sleep(2.0)
    held.sendall(b"more")
    assert held.recv(4) == b"more"
    assert n.proc.poll() is None and not n.record.exists()
    held.close()
    reason, took, app = n.wait()
    assert reason == "open connections finished", n.text()
    assert app["closed"] and app["closed"][0] <= app["term"]  # the client had closed before SIGTERM
    assert took < 60


def test_new_connections_during_the_drain_keep_it_going(node):
    n = node("--drain", "60", "--drain-quiet", "0.5")
    n.stop()
    deadline = time.monotonic() + 2.0
    # A peer that has not dropped us yet: a short request every 0.1 s, each connection open for
    # well under a millisecond, far too briefly for a reading of the socket table to catch it
    # (the namespace's count of accepted connections does).
    while time.monotonic() < deadline:
        n.connect().close()
        time.sleep(0.1)
    assert n.proc.poll() is None and not n.record.exists()
    reason, took, _ = n.wait()
    assert reason == "quiet"
    assert took >= 2.0  # it could not go quiet before the requests stopped


def test_the_upper_bound_always_wins(node):
    held_open = node("--drain", "1", "--drain-quiet", "0.2")
    conn = held_open.connect()
    held_open.stop()
    reason, took, _ = held_open.wait()
    assert reason == "upper bound reached" and took >= 1.0
    assert "1 connection(s) open" in held_open.text()
    conn.close()


def test_a_quiet_period_longer_than_the_bound_is_a_fixed_drain(node):
    fixed = node("--drain", "1", "--drain-quiet", "5")
    fixed.stop()
    reason, took, _ = fixed.wait()
    assert reason == "upper bound reached" and took >= 1.0
