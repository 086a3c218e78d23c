"""Watch at cluster scale (issue 10): what one node reads from Consul per change it does not use.

One `consul agent -dev` holds S services (S = 100, 1,000, 5,000), one instance each, on 200 catalog
nodes. Two watchers run in this process side by side against it, each over its own connection pool
(basenode/consul_async.Pool) and counted by that pool's counters (requests, bytes_received):
the new design, a watch.Watcher wanting routes.route_queries(one route), and the old design, a
watch.catalog.CatalogView serving the same one service, driven by watch.view.follow on an asyncio loop.

The simulated cluster (server CPU and bytes per 100 changes) is bench/cluster.py, propagation at
10-5,000 dependencies bench/dependencies.py.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from basenode.config import ConsulHTTP, Route, Settings
from basenode.consul_async import Counters, Pool
from basenode.dependency import READ_ERRORS, SERVICE, Query
from basenode.routes import route_queries
from basenode.watch import Watcher
from basenode.watch.catalog import RECONCILE_AFTER, CatalogView
from basenode.watch.view import Pacing, SourceStatus, follow
from bench.common import ConsulDev, Context, Processes, Section, Table, fmt
from tests.support.waiting import eventually

TITLE = "Watch at cluster scale (issue 10)"
NODES = 200
ROUTED = "svc00000"


def name(i: int) -> str:
    return f"svc{i:05d}"


def register(agent: ConsulDev, first: int, last: int) -> None:
    """Services first..last-1, one instance each on node i % NODES; 64 operations per transaction."""
    ops: List[dict] = [
        {"Node": {"Verb": "set", "Node": {"Node": f"node{j}", "Address": "127.0.0.1"}}} for j in range(NODES)
    ]
    for i in range(first, last):
        service = {"ID": name(i), "Service": name(i), "Address": "127.0.0.1", "Port": 20000 + i % 10000}
        ops.append({"Service": {"Verb": "set", "Node": f"node{i % NODES}", "Service": service}})
    for start in range(0, len(ops), 64):
        agent.request("PUT", "/v1/txn", ops[start : start + 64])


def move(agent: ConsulDev, i: int, port: int) -> None:
    """Service i's one instance re-registered at another port: a real change to it alone."""
    agent.catalog_register(f"node{i % NODES}", name(i), name(i), port)


def port_of(value: object) -> int:
    instances = [instance for instance, _ in value or ()]  # type: ignore[attr-defined]
    return instances[0].port if instances else 0


class OldNode:
    """The old design: the catalog-wide watch (CatalogView) for one service, on a loop of its own."""

    def __init__(self, http_addr: str, service: str) -> None:
        self.pool = Pool(ConsulHTTP(addr=http_addr), max_connections=2)
        self.view = CatalogView(self.pool, frozenset([service]), include_warning=False)
        self.service = service
        self.value: object = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        pacing = Pacing(300.0, random.Random())
        follower = follow(self.view.read, self._store, SourceStatus("old"), pacing, READ_ERRORS)
        self.task = asyncio.run_coroutine_threadsafe(self._start(follower), self.loop).result(5)

    async def _start(self, follower) -> asyncio.Task:
        return asyncio.ensure_future(follower)

    async def _stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.pool.close()

    def _store(self, values: Dict[str, object]) -> None:
        self.value = values.get(self.service)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class NewNode:
    """The new design: a Watcher wanting what HAProxy needs for one route."""

    def __init__(self, http_addr: str, service: str) -> None:
        settings = Settings(routes=(Route(service, 9000),), consul_http=ConsulHTTP(addr=http_addr))
        self.watcher = Watcher(settings)
        self.query = Query(SERVICE, service)
        self.watcher.want("haproxy", route_queries(settings.routes))
        if not self.watcher.wait_for(route_queries(settings.routes), 30):
            raise RuntimeError("the new watcher read nothing within 30 s")

    @property
    def value(self) -> object:
        return self.watcher.data().get(self.query)

    @property
    def pool(self) -> Pool:
        return self.watcher.pool

    def close(self) -> None:
        self.watcher.close()


@dataclass
class Cost:
    requests: float
    kb: float


def cost(before: Tuple[int, int], counters: Counters, per: int) -> Cost:
    return Cost((counters.requests - before[0]) / per, (counters.bytes_received - before[1]) / 1024 / per)


def snap(counters: Counters) -> Tuple[int, int]:
    return counters.requests, counters.bytes_received


def measure_size(ctx: Context, agent: ConsulDev, size: int, port: List[int]) -> Dict[str, Dict[str, Cost]]:
    nodes = {"new": NewNode(agent.http_addr, ROUTED), "old": OldNode(agent.http_addr, ROUTED)}
    try:
        eventually(lambda: nodes["old"].value is not None, 30, 0.05, "the old watcher's first read")
        time.sleep(1.0)
        found: Dict[str, Dict[str, Cost]] = {k: {} for k in nodes}
        unrelated, relevant, idle = ctx.reps(50, 5), ctx.reps(20, 3), ctx.reps(20.0, 3.0)
        rng = random.Random(size)

        def phase(label: str, changes: int, change) -> None:
            before = {k: snap(n.pool.counters) for k, n in nodes.items()}
            for i in range(changes):
                change(i)
                time.sleep(rng.uniform(0.2, 0.3))
            time.sleep(RECONCILE_AFTER + 1.0)  # the old design's read that makes sure, included
            for k, n in nodes.items():
                found[k][label] = cost(before[k], n.pool.counters, max(changes, 1))

        def unrelated_change(i: int) -> None:
            port[0] += 1
            move(agent, 1 + i % (size - 1), port[0])

        def relevant_change(i: int) -> None:
            port[0] += 1
            move(agent, 0, port[0])
            for n in nodes.values():
                eventually(lambda n=n: port_of(n.value) == port[0], 30, 0.005, "the routed change")

        phase("unrelated", unrelated, unrelated_change)
        phase("relevant", relevant, relevant_change)
        before = {k: snap(n.pool.counters) for k, n in nodes.items()}
        time.sleep(idle)
        for k, n in nodes.items():
            found[k]["idle"] = cost(before[k], n.pool.counters, 1)
            found[k]["idle"] = Cost(found[k]["idle"].requests * 60 / idle, found[k]["idle"].kb * 60 / idle)
        return found
    finally:
        for n in nodes.values():
            n.close()


def run(ctx: Context) -> Section:
    sizes: Sequence[int] = (100, 1000, 5000) if not ctx.quick else (100, 1000)
    rows = []
    results: Dict[int, Dict[str, Dict[str, Cost]]] = {}
    with Processes() as procs:
        agent = ConsulDev(procs, ctx.scratch / "watch-scale")
        try:
            registered, port = 0, [40000]
            for size in sizes:
                register(agent, registered, size)
                registered = size
                t = time.monotonic()
                results[size] = measure_size(ctx, agent, size, port)
                print(f"({size} services: {time.monotonic() - t:.0f} s)", flush=True)
        finally:
            agent.close()
            procs.stop(agent.proc)
    for size, found in results.items():
        for design, label in (("old", "old (catalog-wide watch)"), ("new", "new (per-dependency)")):
            c = found[design]
            rows.append(
                (
                    f"{size:,}",
                    label,
                    fmt(c["unrelated"].requests, 2),
                    fmt(c["unrelated"].kb, 2),
                    fmt(c["relevant"].requests, 2),
                    fmt(c["relevant"].kb, 2),
                    fmt(c["idle"].requests, 2),
                    fmt(c["idle"].kb, 2),
                )
            )
    table = Table(
        "What one node routing 1 service reads from Consul, per change",
        (
            "services in catalog",
            "design",
            "requests / unrelated change",
            "KiB / unrelated change",
            "requests / relevant change",
            "KiB / relevant change",
            "requests / idle minute",
            "KiB / idle minute",
        ),
        tuple(rows),
        (
            "Counted by each watcher's own pool (consul_async.Counters): requests sent, and every byte "
            "read from the agent's sockets (HTTP headers included).",
            "Unrelated change: another service's one instance re-registered at a new port "
            "(/v1/catalog/register), 0.2-0.3 s apart; relevant change: the routed service's instance "
            "moved the same way, waiting until both watchers hold the new port. Each phase's count "
            f"includes the {RECONCILE_AFTER:.0f} s after its last change (the old design's read that "
            "makes sure). Idle: nothing written, scaled to a minute.",
            "Old design: watch.catalog.CatalogView for the one service (blocking on "
            "/v1/internal/ui/services, then a targeted /v1/health/service read; with one service it "
            "never reads the /v1/internal/ui/nodes dump). New design: watch.Watcher wanting "
            "routes.route_queries (the basenode/routes/ KV prefix and the service's health).",
        ),
    )
    new_zero = all(r["new"]["unrelated"].requests == 0 for r in results.values())
    summary = (
        "Target (issue 10): 0 requests and 0 bytes per unrelated change for the new design: "
        + ("met" if new_zero else "MISSED")
        + " ("
        + "; ".join(
            f"{s:,} services: old {fmt(r['old']['unrelated'].kb, 1)} KiB, new "
            f"{fmt(r['new']['unrelated'].kb, 1)} KiB per unrelated change"
            for s, r in results.items()
        )
        + ").",
        "The simulated cluster (server CPU and bytes per 100 changes) and propagation, threads, "
        "connections and RSS at 10-5,000 dependencies: the sections of bench/cluster.py and "
        "bench/dependencies.py.",
    )
    method = (
        f"One `consul agent -dev` (loopback) with S services, one instance each on {NODES} catalog nodes "
        "(catalog transactions); both watchers run in the harness's process at once, on the same changes.",
    )
    return Section(TITLE, (table,), method, summary)
