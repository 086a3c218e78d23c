"""A Consul cluster on loopback for benchmarks: one server agent (not -dev) and client agents joined to it.

The server runs `-server -bootstrap-expect=1` with its own data dir; each client binds an address of
its own (127.0.0.2, 127.0.0.3, ...: all of 127/8 is loopback on Linux), so the server sees one client
address per node as in a real cluster, with ports picked free on that address.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from bench.common import ConsulClient, Processes, clean_env, consul_binary
from tests.support.waiting import eventually

# Raft's timings at production speed (1.8's default multiplier, 5, is for slow machines): a
# single-server cluster elects itself within a second.
FAST_RAFT = "performance { raft_multiplier = 1 }"


def free_port_on(address: str, taken: List[int]) -> int:
    """A port free for TCP and UDP on `address` (serf gossips on both), not in `taken`."""
    while True:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind((address, 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind((address, port))
            except OSError:
                continue
        if port not in taken:
            taken.append(port)
            return port


@dataclass
class Agent:
    name: str
    address: str
    ports: Dict[str, int]
    proc: subprocess.Popen
    log: Path

    @property
    def http_addr(self) -> str:
        return f"{self.address}:{self.ports['http']}"


def start_agent(
    procs: Processes, workdir: Path, name: str, address: str, server: Optional[Tuple[str, int]] = None
) -> Agent:
    """A server agent (server None) or a client agent joined to the server's serf LAN `server`."""
    binary = consul_binary()
    if not binary:
        raise RuntimeError("consul not found: run `make system-deps`")
    taken: List[int] = []
    ports = {p: free_port_on(address, taken) for p in ("http", "serf_lan", "serf_wan", "server")}
    data = workdir / name
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        binary,
        "agent",
        f"-node={name}",
        f"-bind={address}",
        f"-client={address}",
        f"-data-dir={data / 'data'}",
        f"-http-port={ports['http']}",
        f"-serf-lan-port={ports['serf_lan']}",
        f"-serf-wan-port={ports['serf_wan']}",
        f"-server-port={ports['server']}",
        "-dns-port=-1",
        "-grpc-port=-1",
        "-log-level=warn",
        "-disable-host-node-id",  # every agent on this host gets a node ID of its own
    ]
    if server is None:
        argv += ["-server", "-bootstrap-expect=1", f"-hcl={FAST_RAFT}"]
    else:
        argv += [f"-retry-join={server[0]}:{server[1]}", "-retry-interval=1s"]
    log = data / "consul.log"
    proc = procs.start(argv, env=clean_env(), log=log)
    return Agent(name, address, ports, proc, log)


def client_of(agent: Agent) -> ConsulClient:
    """The harness's HTTP client for `agent` (ConsulClient talks to 127.0.0.1: only the server is there)."""
    if agent.address != "127.0.0.1":
        raise ValueError(f"{agent.name} listens on {agent.address}, not 127.0.0.1")
    return ConsulClient(agent.ports["http"])


def alive_members(server: ConsulClient) -> int:
    try:
        members = server.request("GET", "/v1/agent/members")
    except (OSError, RuntimeError, ValueError):
        return 0
    return sum(1 for m in members or () if m.get("Status") == 1)  # type: ignore[union-attr]


def start_cluster(procs: Processes, workdir: Path, clients: int) -> Tuple[Agent, ConsulClient, List[Agent]]:
    """The server on 127.0.0.1 and `clients` client agents on 127.0.0.2..., all joined and alive."""
    server = start_agent(procs, workdir, "server", "127.0.0.1")
    api = client_of(server)

    def leader() -> bool:
        if server.proc.poll() is not None:
            raise RuntimeError(f"consul server exited with {server.proc.returncode}; see {server.log}")
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            return bool(api.request("GET", "/v1/status/leader"))
        return False

    eventually(leader, 60, 0.1, "the consul server to elect itself leader")
    agents = [
        start_agent(procs, workdir, f"client{k}", f"127.0.0.{k + 2}", ("127.0.0.1", server.ports["serf_lan"]))
        for k in range(clients)
    ]

    def joined() -> bool:
        for a in agents:
            if a.proc.poll() is not None:
                raise RuntimeError(f"consul {a.name} exited with {a.proc.returncode}; see {a.log}")
        return alive_members(api) == clients + 1

    eventually(joined, 120, 0.2, f"{clients} client agents to join the server")
    return server, api, agents


def cpu_seconds(pid: int) -> float:
    """utime + stime of /proc/PID/stat, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SS_SOCKET = re.compile(r"^\S+\s+\d+\s+\d+\s+(\S+)\s+(\S+)\s+users:")
SS_SENT = re.compile(r"bytes_sent:(\d+)")


def tcp_bytes_sent(pid: int) -> Dict[Tuple[str, str], int]:
    """{(local, peer): bytes sent} of every TCP socket of `pid` (kernel tcp_info, via `ss -tinp`)."""
    out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, check=True).stdout
    found: Dict[Tuple[str, str], int] = {}
    current = None
    for line in out.splitlines():
        head = SS_SOCKET.match(line)
        if head:
            current = (head.group(1), head.group(2)) if f"pid={pid}," in line else None
            continue
        sent = SS_SENT.search(line)
        if current is not None and sent:
            found[current] = int(sent.group(1))
            current = None
    return found


def sent_since(before: Dict[Tuple[str, str], int], after: Dict[Tuple[str, str], int]) -> int:
    """Bytes sent between two readings (a socket opened in between counts from its start; one closed
    in between is not counted)."""
    return sum(n - before.get(key, 0) for key, n in after.items() if n >= before.get(key, 0))
