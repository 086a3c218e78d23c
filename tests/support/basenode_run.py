"""`basenode run` as a user starts it: the zipapp, against the test's own Consul agent.

`start_basenode(routes, *flags)` (a fixture) starts `dist/basenode run --no-consul` with its own
state dir and a free status port; every node started is stopped at the end of the test.
Options: `consul_addr=` talks to another address than the agent's (e.g. a proxy in front of it);
`own_agent=True` lets basenode run its own agent, a client on loopback (every port its own, so
parallel runs never collide) joined to the test's agent; `state_dir=` puts the state dir elsewhere.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from basenode.config import Settings
from basenode.output import haproxy
from tests.conftest import ZIPAPP, require_binary
from tests.support.backends import Backends, names_seen
from tests.support.consul_agent import ConsulAgent
from tests.support.ports import free_port
from tests.support.waiting import eventually


def own_agent_config(server: ConsulAgent, node_name: str) -> Tuple[str, str]:
    """(TOML [consul] table, CONSUL_HTTP_ADDR) for basenode's own agent: a client bound to loopback,
    every port its own, joined to `server`."""
    ports = {name: free_port() for name in ("http", "dns", "serf-lan", "serf-wan", "server", "grpc")}
    args = ["-bind=127.0.0.1", *(f"-{name}-port={port}" for name, port in ports.items() if name != "http")]
    join = f"127.0.0.1:{server.ports['serf_lan']}"
    table = (
        "[consul]\n"
        f"join = [{json.dumps(join)}]\n"
        f"node_name = {json.dumps(node_name)}\n"
        f"extra_args = {json.dumps(args)}\n"
    )
    return table, f"127.0.0.1:{ports['http']}"


class Basenode:
    """`dist/basenode run` against the given agent (see the module docstring), output captured to a file."""

    def __init__(
        self,
        agent: ConsulAgent,
        tmp: Path,
        routes: str,
        *extra: str,
        consul_addr: Optional[str] = None,
        own_agent: bool = False,
        state_dir: Optional[Path] = None,
    ) -> None:
        require_binary("haproxy")
        self.state_dir = state_dir or tmp / "state"
        self.log_path = tmp / "basenode.log"
        self.settings = Settings(state_dir=self.state_dir)
        self.status_addr = f"127.0.0.1:{free_port()}"
        config, consul_flags = os.devnull, ["--no-consul"]
        if own_agent:
            table, consul_addr = own_agent_config(agent, f"basenode-{tmp.name}")
            config, consul_flags = str(tmp / "basenode.toml"), []
            Path(config).write_text(table)
        self.consul_addr = consul_addr or agent.http_addr
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("BASENODE_", "CONSUL_"))},
            "CONSUL_HTTP_ADDR": self.consul_addr,
            "BASENODE_CONFIG": config,
        }
        self.argv = [
            sys.executable,
            str(ZIPAPP),
            "run",
            *consul_flags,
            "--state-dir",
            str(self.state_dir),
            "--routes",
            routes,
            "--status-addr",
            self.status_addr,
            *extra,
        ]
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)

    def get(self, path: str) -> Tuple[int, bytes]:
        """GET a path of its status endpoint: (status code, body)."""
        try:
            with urllib.request.urlopen(f"http://{self.status_addr}{path}", timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def health(self) -> Tuple[int, Dict[str, Any]]:
        code, body = self.get("/health")
        return code, json.loads(body)

    def healthy(self) -> bool:
        """GET /health answers 200 (False while it answers 503 or not at all)."""
        try:
            return self.get("/health")[0] == 200
        except OSError:
            return False

    def problems(self, prefix: str) -> List[str]:
        """The problems /health lists that start with `prefix` ([] while it is 200 or not answering)."""
        try:
            code, body = self.health()
        except OSError:
            return []
        return [p for p in body["problems"] if p.startswith(prefix)] if code == 503 else []

    def status(self) -> Dict[str, Any]:
        return json.loads(self.get("/status")[1])

    def metrics(self) -> Dict[str, float]:
        """/metrics as {'name{labels}': value}."""
        values = {}
        for line in self.get("/metrics")[1].decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def metric(self, sample: str) -> float:
        """One sample of /metrics, e.g. 'basenode_consul_errors_total'; 0 while it is absent (a
        labelled counter appears with its first event)."""
        return self.metrics().get(sample, 0.0)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def child_pids(self, program: str) -> List[int]:
        """PIDs of basenode's direct children whose executable is named `program` (e.g. "consul")."""
        found = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue  # the thread ended
            for pid in children:
                try:
                    argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
                except OSError:
                    continue  # the child ended
                if os.path.basename(argv0.decode(errors="replace")) == program:
                    found.append(int(pid))
        return found

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        base = [
            sys.executable,
            str(ZIPAPP),
            *args[:1],
            "--no-consul",
            "--state-dir",
            str(self.state_dir),
            "--status-addr",
            self.status_addr,
        ]
        return subprocess.run([*base, *args[1:]], env=self.env, capture_output=True, text=True, timeout=60)

    def proc_info(self) -> haproxy.ProcInfo:
        """The master's `show proc`; the master CLI refuses for a moment while a reload re-executes it."""

        def ask() -> Optional[haproxy.ProcInfo]:
            try:
                return haproxy.show_proc(self.settings.haproxy_master_socket)
            except haproxy.RuntimeAPIError:
                return None

        return eventually(ask, timeout=10, what="the HAProxy master CLI to answer")

    def stop(self) -> int:
        terminate(self.proc)
        self.log.close()
        return self.proc.returncode


def terminate(proc: subprocess.Popen, timeout: float = 20) -> int:
    """SIGTERM, as docker stop sends it; SIGKILL if it is still there after `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class HealthPoller:
    """GET /health from a thread, back to back, until closed; keeps the problems of every 503.

    For faults that basenode repairs within a second (a killed program it restarts): a test that
    asked /health once after the fault could come too late to see it.
    """

    def __init__(self, node: Basenode) -> None:
        self.node = node
        self.seen: List[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="health-poller", daemon=True)

    def __enter__(self) -> HealthPoller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=15)

    def problems(self, prefix: str) -> List[str]:
        return [p for p in list(self.seen) if p.startswith(prefix)]

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                code, body = self.node.health()
            except (OSError, ValueError):
                continue  # the sync loop, which serves the endpoint, is not listening (yet)
            if code == 503:
                self.seen.extend(body["problems"])


@pytest.fixture
def backends() -> Iterator[Backends]:
    pool = Backends()
    yield pool
    pool.close()


@pytest.fixture
def start_basenode(tmp_path: Path, consul_agent: ConsulAgent) -> Iterator:
    if not ZIPAPP.exists():
        pytest.fail(f"{ZIPAPP} is missing; run `make zipapp`", pytrace=False)
    started: List[Basenode] = []

    def start(routes: str, *extra: str, **options: Any) -> Basenode:
        node = Basenode(consul_agent, tmp_path, routes, *extra, **options)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def serving(port: int, expected: Sequence[str]):
    """A probe: the set of backends answering on `port` is exactly `expected`."""

    def probe() -> bool:
        try:
            return names_seen(port, 12) == sorted(expected)
        except (OSError, RuntimeError, http.client.HTTPException):  # e.g. a restart cut the answer short
            return False

    return probe
