"""A real `consul agent -dev` on free loopback ports, for tests.

Every port is set explicitly (http, dns, serf_lan, serf_wan, server, grpc) so that parallel agents,
and an agent restarted on the same ports, never collide with anything else. The helpers talk to the
agent's HTTP API with urllib only: the code under test uses py-consul, the fixture must not depend on it.

Use the `consul_agent` fixture (function scope: a test that stops the agent or needs a clean catalog)
or `consul_agent_session` (one agent for many tests; each test uses its own service names).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence

import pytest

from .ports import free_port
from .waiting import eventually

PORT_NAMES = ("http", "dns", "serf_lan", "serf_wan", "server", "grpc")


@dataclass
class ConsulAgent:
    """One dev agent. `start()` / `stop()` may be called repeatedly: the ports and node name stay the same."""

    binary: str
    ports: Dict[str, int] = field(default_factory=lambda: {name: free_port() for name in PORT_NAMES})
    node_name: str = field(default_factory=lambda: f"test-node-{os.getpid()}-{free_port()}")
    data_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="basenode-consul-"))
    process: Optional[subprocess.Popen] = None
    log_path: str = ""
    datacenter: str = "dc1"  # -dev's default

    @property
    def http_addr(self) -> str:
        return f"127.0.0.1:{self.ports['http']}"

    @property
    def url(self) -> str:
        return f"http://{self.http_addr}"

    def command(self) -> List[str]:
        return [
            self.binary,
            "agent",
            "-dev",
            "-bind=127.0.0.1",
            "-client=127.0.0.1",
            f"-node={self.node_name}",
            f"-datacenter={self.datacenter}",
            f"-data-dir={self.data_dir}",
            f"-http-port={self.ports['http']}",
            f"-dns-port={self.ports['dns']}",
            f"-serf-lan-port={self.ports['serf_lan']}",
            f"-serf-wan-port={self.ports['serf_wan']}",
            f"-server-port={self.ports['server']}",
            f"-grpc-port={self.ports['grpc']}",
            "-log-level=warn",
        ]

    def start(self, timeout: float = 30.0) -> ConsulAgent:
        assert self.process is None, "agent already running"
        self.log_path = os.path.join(self.data_dir, "agent.log")
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed in stop()
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self._log = log
        eventually(
            self._started,
            timeout=timeout,
            interval=0.05,
            what=f"consul agent on {self.http_addr} to elect a leader",
        )
        return self

    def _started(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"consul agent exited with {self.process.returncode}:\n{self.log_tail()}")
        return self.ready()

    def ready(self) -> bool:
        """It has a leader and its own node is in the catalog (registrations sync to it from then on)."""
        try:
            leader = self.get("/v1/status/leader")
            if not leader:
                return False
            # The node itself must be in the catalog before registrations sync to it.
            return bool(self.get(f"/v1/catalog/node/{self.node_name}"))
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`. A -dev agent restarts with an empty catalog."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        self._log.close()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    # --- HTTP -------------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, raw: Optional[bytes] = None) -> Any:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read().decode()
        return json.loads(text) if text.strip() else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    # --- services and checks ----------------------------------------------------------------------

    def register(
        self,
        name: str,
        port: int,
        service_id: Optional[str] = None,
        address: str = "127.0.0.1",
        tags: Sequence[str] = (),
        meta: Optional[Dict[str, str]] = None,
        ttl_check: bool = True,
        status: str = "passing",
    ) -> str:
        """Register a service with the agent, with a TTL check in `status` (unless ttl_check=False).

        Returns the service id; its check id is `check_id(service_id)`.
        """
        service_id = service_id or f"{name}-{port}"
        body: Dict[str, Any] = {
            "ID": service_id,
            "Name": name,
            "Port": port,
            "Address": address,
            "Tags": list(tags),
        }
        if meta:
            body["Meta"] = meta
        if ttl_check:
            body["Check"] = {"CheckID": self.check_id(service_id), "TTL": "10m", "Status": status}
        self.request("PUT", "/v1/agent/service/register", body)
        return service_id

    def join_wan(self, other: ConsulAgent) -> None:
        """Join `other`'s datacenter over the WAN (both are servers: -dev), and wait until this agent
        can read the other datacenter's catalog."""
        self.request("PUT", f"/v1/agent/join/127.0.0.1:{other.ports['serf_wan']}?wan=1")

        def reachable() -> bool:
            try:
                self.get(f"/v1/catalog/services?dc={other.datacenter}")
                return True
            except (OSError, urllib.error.URLError, ValueError):
                return False

        eventually(reachable, timeout=30, what=f"{other.datacenter} reachable from {self.datacenter}")

    def register_raw(self, body: Dict[str, Any]) -> None:
        """A registration exactly as given (hostile input); urllib.error.HTTPError if Consul refuses it."""
        self.request("PUT", "/v1/agent/service/register", body)

    def catalog_register(self, node: str, name: str, port: int, address: str = "127.0.0.2") -> str:
        """Register straight into the catalog on an external `node` (no agent: not restored on restart)."""
        service_id = f"{name}-{port}"
        body = {
            "Node": node,
            "Address": address,
            "Service": {"ID": service_id, "Service": name, "Port": port},
        }
        self.request("PUT", "/v1/catalog/register", body)
        return service_id

    def deregister(self, service_id: str) -> None:
        self.request("PUT", f"/v1/agent/service/deregister/{service_id}")

    @staticmethod
    def check_id(service_id: str) -> str:
        return f"ttl-{service_id}"

    def set_check(self, service_id: str, status: str) -> None:
        """status: passing | warning | critical (the TTL check endpoints pass / warn / fail)."""
        verb = {"passing": "pass", "warning": "warn", "critical": "fail"}[status]
        self.request("PUT", f"/v1/agent/check/{verb}/{self.check_id(service_id)}")

    def health(self, name: str) -> List[Dict[str, Any]]:
        return self.get(f"/v1/health/service/{name}") or []

    # --- KV ---------------------------------------------------------------------------------------

    def kv_put(self, key: str, value: str) -> None:
        self.request("PUT", f"/v1/kv/{key}", raw=value.encode())

    def kv_delete(self, key: str, recurse: bool = False) -> None:
        self.request("DELETE", f"/v1/kv/{key}" + ("?recurse" if recurse else ""))


def _start(binary: str, datacenter: str = "dc1") -> ConsulAgent:
    agent = ConsulAgent(binary=binary, datacenter=datacenter)
    try:
        return agent.start()
    except BaseException:
        agent.close()
        raise


def running_agent(binary: str, datacenter: str = "dc1") -> Iterator[ConsulAgent]:
    agent = _start(binary, datacenter)
    try:
        yield agent
    finally:
        agent.close()


@pytest.fixture
def consul_agent() -> Iterator[ConsulAgent]:
    """A fresh agent for one test (it may stop and start it)."""
    from tests.conftest import require_binary

    yield from running_agent(require_binary("consul"))


@pytest.fixture(scope="session")
def consul_agent_session() -> Iterator[ConsulAgent]:
    """One agent shared by many tests: use unique service names and KV keys, and never stop it."""
    from tests.conftest import require_binary

    yield from running_agent(require_binary("consul"))
