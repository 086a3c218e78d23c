"""A simulated cluster (issue 10, table 2): what unrelated changes cost the Consul server, old design vs new.

One Consul server agent (not -dev: `-server -bootstrap-expect=1`) on 127.0.0.1 and CLIENTS client
agents joined to it, each on an address of its own (bench/consul_cluster.py). The catalog holds 1,000
services, one instance each, on 200 catalog nodes; node k routes service k. Three phases, each with
100 unrelated changes (another service's instance re-registered at a new port, written to the server):
- no readers: the cost of the changes themselves (raft, catalog, the writes' answers);
- new design: on every client agent, a real `basenode run --no-consul` routing that node's service;
- old design: on every client agent, watch_scale's OldNode (the catalog-wide watch basenode had before
  issue 10) for that node's service, run in this process. Last: a client agent keeps a blocking query
  it forwarded to the server after its HTTP client has gone, so the old readers' queries would go on
  costing the server during a phase after them.
Measured on the server process: CPU seconds (utime + stime), bytes it sent on TCP (tcp_info of its
sockets: to the client agents it serves, and the harness's writes), and for each node what it read
from its own agent (the old reader's pool counters; basenode's /status `watch` counters).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

from bench import changes, common, consul_cluster, dependencies, discovery, watch_scale
from bench.common import Context, Processes, Section, Table, fmt
from tests.support.waiting import eventually

TITLE = "Simulated cluster: Consul server cost of unrelated changes (issue 10)"
CLIENTS = 10
SERVICES = 1000
GAP = (0.2, 0.3)


@dataclass(frozen=True)
class Reading:
    server_cpu: float
    server_sent: Dict[Tuple[str, str], int]
    server_wchar: int
    clients_cpu: float
    node_requests: int
    node_bytes: int
    at: float


@dataclass(frozen=True)
class Cost:
    """Per 100 changes, over one phase."""

    changes: int
    seconds: float
    server_cpu: float
    server_kib: float
    server_wchar_kib: float
    clients_cpu: float
    node_requests: float  # per node per change
    node_kib: float  # per node per change


def wchar(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def reading(server: int, clients: Sequence[int], nodes: Callable[[], Tuple[int, int]]) -> Reading:
    requests, got = nodes()
    return Reading(
        consul_cluster.cpu_seconds(server),
        consul_cluster.tcp_bytes_sent(server),
        wchar(server),
        sum(consul_cluster.cpu_seconds(pid) for pid in clients),
        requests,
        got,
        time.monotonic(),
    )


def phase(
    api: common.ConsulClient,
    server: int,
    clients: Sequence[int],
    nodes: Callable[[], Tuple[int, int]],
    changes: int,
    port: List[int],
    first_unrouted: int,
    rng: random.Random,
) -> Cost:
    time.sleep(2.0)
    before = reading(server, clients, nodes)
    for _ in range(changes):
        time.sleep(rng.uniform(*GAP))
        port[0] += 1
        watch_scale.move(api, rng.randrange(first_unrouted, SERVICES), port[0])  # type: ignore[arg-type]
    time.sleep(watch_scale.RECONCILE_AFTER + 1.0)  # the old design's read that makes sure
    after = reading(server, clients, nodes)
    per = 100.0 / changes
    node_count = max(len(clients), 1)
    return Cost(
        changes,
        after.at - before.at,
        (after.server_cpu - before.server_cpu) * per,
        consul_cluster.sent_since(before.server_sent, after.server_sent) / 1024 * per,
        (after.server_wchar - before.server_wchar) / 1024 * per,
        (after.clients_cpu - before.clients_cpu) * per,
        (after.node_requests - before.node_requests) / node_count / changes,
        (after.node_bytes - before.node_bytes) / 1024 / node_count / changes,
    )


def run(ctx: Context) -> Section:
    load_at_start = common.load_average()
    clients = ctx.reps(CLIENTS, 5)
    changes = ctx.reps(100, 20)
    rng = random.Random(10)
    port = [40000]
    costs: Dict[str, Cost] = {}
    with Processes() as procs:
        backends = common.start_backends(procs, ("base",), ctx.python, ctx.scratch / "cluster-backends.log")
        t = time.monotonic()
        server, api, agents = consul_cluster.start_cluster(procs, ctx.scratch / "cluster", clients)
        print(f"(cluster of 1 server + {clients} clients up in {time.monotonic() - t:.0f} s)", flush=True)
        try:
            watch_scale.register(api, 0, SERVICES)  # type: ignore[arg-type]
            for k in range(clients):
                watch_scale.move(api, k, backends["base"])  # type: ignore[arg-type]
            client_pids = [a.proc.pid for a in agents]
            costs["none"] = phase(
                api, server.proc.pid, client_pids, lambda: (0, 0), changes, port, clients, rng
            )
            subjects = []
            try:
                for k, a in enumerate(agents):
                    routes = {watch_scale.name(k): common.free_port()}
                    workdir = ctx.scratch / f"cluster-node{k}"
                    subjects.append(
                        discovery.start_basenode(ctx, procs, f"node{k}", workdir, a.http_addr, routes)
                    )
                for k, subject in enumerate(subjects):
                    discovery.wait_serving(subject, watch_scale.name(k), "base", 120)

                def new_counts() -> Tuple[int, int]:
                    docs = [dependencies.status_watch(s.status_port) for s in subjects]
                    return sum(int(d["requests"]) for d in docs), sum(int(d["bytes_received"]) for d in docs)

                costs["new"] = phase(
                    api, server.proc.pid, client_pids, new_counts, changes, port, clients, rng
                )
            finally:
                for subject in subjects:
                    discovery.stop_subject(procs, subject)
            old = [watch_scale.OldNode(a.http_addr, watch_scale.name(k)) for k, a in enumerate(agents)]
            try:
                for node in old:
                    eventually(lambda n=node: n.value is not None, 60, 0.05, "an old reader's first read")

                def old_counts() -> Tuple[int, int]:
                    return (
                        sum(n.pool.counters.requests for n in old),
                        sum(n.pool.counters.bytes_received for n in old),
                    )

                costs["old"] = phase(
                    api, server.proc.pid, client_pids, old_counts, changes, port, clients, rng
                )
            finally:
                for node in old:
                    node.close()
        finally:
            api.close()
    return section(ctx, clients, costs, load_at_start)


LABELS = {
    "none": "no readers (the changes alone)",
    "old": "old design: catalog-wide watch on every node",
    "new": "new design: basenode (per-dependency) on every node",
}


def section(ctx: Context, clients: int, costs: Dict[str, Cost], load_at_start: str) -> Section:
    alone = costs["none"]
    rows = []
    for key, label in LABELS.items():
        c = costs[key]
        rows.append(
            (
                label,
                str(c.changes),
                fmt(c.server_cpu, 2),
                fmt(c.server_cpu - alone.server_cpu, 2),
                fmt(c.server_kib, 1),
                fmt(c.server_kib - alone.server_kib, 1),
                fmt(c.server_wchar_kib, 1),
                fmt(c.clients_cpu, 2),
                "-" if key == "none" else fmt(c.node_requests, 2),
                "-" if key == "none" else fmt(c.node_kib, 2),
            )
        )
    table = Table(
        f"Consul server per 100 unrelated changes, 1 server + {clients} client agents, each node "
        "routing 1 service",
        (
            "readers",
            "changes",
            "server CPU s",
            "above no readers",
            "server TCP KiB sent",
            "above no readers",
            "server wchar KiB",
            "client agents CPU s (sum)",
            "requests / node / change",
            "KiB / node / change",
        ),
        tuple(rows),
        (
            f"Per 100 changes (scaled from {alone.changes} per phase), counted from 2 s before the first "
            f"change until {watch_scale.RECONCILE_AFTER + 1:.0f} s after the last (the old design's read "
            "that makes sure); a change re-registers one unrouted service's instance at a new port "
            f"(/v1/catalog/register on the server), {GAP[0]:g}-{GAP[1]:g} s apart.",
            "server CPU: utime + stime of the server agent's process (/proc/PID/stat, 10 ms ticks); TCP "
            "KiB sent: the sum of tcp_info bytes_sent over the server process's TCP sockets (`ss -tinp`), "
            "that is the RPC answers to the client agents plus the answers to the harness's writes "
            "(gossip is UDP and not counted); wchar: bytes the process wrote (/proc/PID/io: sockets and "
            "its raft log together). above no readers: the row minus the first.",
            "requests and KiB per node per change: what each node read from its own client agent "
            "(old: the reader's pool counters; new: basenode's /status `watch.requests` and "
            "`watch.bytes_received`), averaged over the nodes.",
            "The old design's readers are watch_scale.OldNode (basenode's former CatalogView on a loop of "
            "its own, for the node's one service), all in the harness's process; the new design's are "
            f"{clients} real `{ctx.python} dist/basenode run --no-consul --routes SERVICE:PORT/http`, each "
            "with CONSUL_HTTP_ADDR at its node's client agent (its HAProxy included).",
        ),
    )
    old, new = costs["old"], costs["new"]
    summary = (
        f"Server CPU above the changes' own cost, per 100 unrelated changes with {clients} nodes: old "
        f"{old.server_cpu - alone.server_cpu:.2f} s, new {new.server_cpu - alone.server_cpu:.2f} s; "
        f"server TCP bytes sent above it: old {old.server_kib - alone.server_kib:.0f} KiB, new "
        f"{new.server_kib - alone.server_kib:.0f} KiB.",
        f"Each node read per unrelated change: old {old.node_requests:.2f} requests, {old.node_kib:.1f} "
        f"KiB; new {new.node_requests:.2f} requests, {new.node_kib:.2f} KiB.",
    )
    method = (
        f"1 Consul 1.8.7 server agent (`-server -bootstrap-expect=1`, raft_multiplier 1) on 127.0.0.1 and "
        f"{clients} client agents on 127.0.0.2-127.0.0.{clients + 1}, all on this machine, joined over "
        f"serf; {SERVICES:,} services on {watch_scale.NODES} catalog nodes (catalog transactions); node k "
        "routes service k (its instance answers through HAProxy).",
        changes.load_note(load_at_start),
    )
    return Section(TITLE, (table,), method, summary)
