"""Propagation at 10 to 5,000 dependencies (issue 10, table 3), beside the floor.

A `consul agent -dev` with Consul's default limits (200 connections per client address), a fresh one for
each size, holds 5,000 services, one instance each, on 200 catalog nodes, and `web`, which basenode
routes. For N = 10, 100, 1,000 and 5,000 a basenode runs alone with one template calling service() for N
of those services (the templates family's template) and the route `web`: N + 1 service dependencies
and the routes' KV prefix.
A change is the floor family's: an agent registration of a second instance of `web`, or its
deregistration, seen by the floor (a bare blocking query) and by HAProxy's runtime state.
After the changes: the sync process's threads, its TCP connections to the agent and its RSS, and what
basenode's /status says of its watch (blocking queries, services on the catalog-wide watch).
"""

from __future__ import annotations

import json
import random
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from bench import changes, common, discovery, templates, watch_scale
from bench.common import ConsulDev, Context, Processes, Section, Table, fmt, pct, percentile
from tests.support.procs import connections_to, threads
from tests.support.waiting import eventually

TITLE = "Propagation at 10-5,000 dependencies (issue 10)"
SIZES = (10, 100, 1000, 5000)
MIB = 1024.0


@dataclass(frozen=True)
class Result:
    dependencies: int
    first_render: float  # s from start until the template's file and web's servers were all there
    timings: changes.Timings
    threads: int
    connections: int
    rss_kb: int
    watch: Dict[str, object]  # /status "watch"


def status_watch(port: int) -> Dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as resp:
        doc = json.loads(resp.read())
    return doc.get("watch") or {}


def rendered(path: Path, services: Sequence[str]) -> bool:
    """The template's file lists an endpoint for the last of its services (so every one was read)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return False
    return f"{services[-1]}: " in text  # the template's blocks leave no newline between services


def one_size(
    ctx: Context,
    procs: Processes,
    agent: ConsulDev,
    backends: Dict[str, int],
    base: frozenset,
    size: int,
) -> Result:
    workdir = ctx.scratch / f"deps-{size}"
    workdir.mkdir(parents=True, exist_ok=True)
    services = [watch_scale.name(i) for i in range(size)]
    config, outputs = templates.write_config(workdir, 1, services)
    t0 = time.monotonic()
    subject, seen_by = changes.start_routed(
        ctx,
        procs,
        agent,
        workdir,
        {changes.SERVICE: common.free_port()},
        changes.SERVICE,
        base,
        ("--config", str(config)),
    )
    try:

        def done() -> bool:
            if subject.proc.poll() is not None:
                raise RuntimeError(f"basenode exited with {subject.proc.returncode}; see {subject.log}")
            return rendered(outputs[0], services)

        eventually(done, 300, 0.05, f"{size} services rendered to {outputs[0]}")
        first = time.monotonic() - t0
        time.sleep(2.0)  # past start-up
        timings = changes.time_changes(
            agent,
            subject,
            changes.SERVICE,
            base,
            backends,
            ctx.reps(100, 10),
            changes.SCALE_GAP,
            seen_by,
            random.Random(),
            probe=False,
        )
        sync = templates.sync_process(procs, subject.proc)
        return Result(
            size,
            first,
            timings,
            threads(sync),
            connections_to(sync, agent.http_port),
            common.memory_of(sync).rss_kb,
            status_watch(subject.status_port),
        )
    finally:
        changes.stop_all(procs, subject, seen_by)


def table(results: Sequence[Result]) -> Table:
    ref = results[0].timings
    rows = []
    for r in results:
        t = r.timings
        on_catalog = r.watch.get("catalog_watch")
        rows.append(
            (
                f"{r.dependencies:,}",
                *changes.floor_and_runtime(t),
                common.ratio(percentile(t.runtime, 50), percentile(t.floor, 50)),
                common.ratio(
                    percentile(t.runtime, 99) if len(t.runtime) >= 100 else float("nan"),
                    percentile(t.floor, 99),
                ),
                common.ratio(percentile(t.runtime, 50), percentile(ref.runtime, 50)),
                str(r.threads),
                str(r.connections),
                str(r.watch.get("queries", "-")),
                str(len(on_catalog)) if isinstance(on_catalog, list) else "-",
                "-" if not isinstance(on_catalog, list) else "yes" if changes.SERVICE in on_catalog else "no",
                fmt(r.rss_kb / MIB),
                fmt(r.first_render),
            )
        )
    notes = (
        "dependencies: the services the template calls service() for; basenode also follows `web` "
        "(routed) and the `basenode/routes/` KV prefix. Changes: agent registration of a second "
        "instance of `web` and its deregistration in turn, at random moments "
        f"{changes.SCALE_GAP[0]:g}-{changes.SCALE_GAP[1]:g} s apart; floor and runtime state as in the "
        "floor family's propagation table (no probes through HAProxy here).",
        "sync threads (/proc Threads), TCP connections of the sync process to the agent's HTTP port "
        "(/proc net/tcp) and its RSS (VmRSS), read after the changes; queries and on the catalog watch: "
        "basenode's /status (`watch.queries`, `watch.catalog_watch`), services past `watch.max_conns` "
        "(default 100) are served by the one catalog-wide watch; web on it: whether the routed service whose "
        "changes are timed is one of them.",
        "first render: from `basenode run` until the template's file listed the last of its services and "
        "HAProxy routed `web`.",
    )
    return Table(
        "Propagation and cost of the sync process by number of dependencies",
        (
            "dependencies",
            "changes",
            "floor p50 (ms)",
            "floor p99",
            "runtime state p50 (ms)",
            "runtime state p99",
            "p50 / floor",
            "p99 / floor",
            "p50 vs 10",
            "sync threads",
            "connections to the agent",
            "queries",
            "on the catalog watch",
            "web on it",
            "sync RSS (MiB)",
            "first render (s)",
        ),
        tuple(rows),
        notes,
    )


def run(ctx: Context) -> Section:
    load_at_start = common.load_average()
    sizes: Tuple[int, ...] = SIZES if not ctx.quick else (10, 1000)
    results: List[Result] = []
    with Processes() as procs:
        names = ("base", *discovery.NEW)
        backends = common.start_backends(procs, names, ctx.python, ctx.scratch / "deps-backends.log")
        base = frozenset({backends["base"]})
        for size in sizes:
            # An agent of its own per size: a stopped basenode's blocking queries stay held at the agent
            # (and count against its 200 connections per client address) until their wait runs out.
            t = time.monotonic()
            agent = ConsulDev(procs, ctx.scratch / f"deps-consul-{size}")
            try:
                watch_scale.register(agent, 0, max(sizes))
                agent.agent_register(changes.SERVICE, f"{changes.SERVICE}-base", backends["base"])
                results.append(one_size(ctx, procs, agent, backends, base, size))
            finally:
                agent.close()
                procs.stop(agent.proc)
            print(f"({size} dependencies: {time.monotonic() - t:.0f} s)", flush=True)
    worst: Optional[Result] = max(results, key=lambda r: r.threads) if results else None
    summary = (
        "Target (issue 10): propagation p50/p99 must not get worse with more dependencies: "
        + "; ".join(
            f"{r.dependencies:,}: p50 {pct(r.timings.runtime, 50)} ms, p99 "
            f"{pct(r.timings.runtime, 99, min_samples=100)} ms"
            for r in results
        )
        + ".",
        "Target (issue 10): sync threads at most 10: "
        + ("met" if worst is not None and worst.threads <= 10 else "MISSED")
        + f" (at most {worst.threads if worst else '-'}); connections to the agent at most "
        f"{max(r.connections for r in results)} (watch.max_conns 100).",
    )
    method = (
        "A `consul agent -dev` for each size (Consul 1.8.7, loopback, default limits), holding "
        f"{max(SIZES):,} services, one instance each, on {watch_scale.NODES} catalog nodes; basenode runs as "
        f"`{ctx.python} dist/basenode run --no-consul --config FILE --routes web:PORT/http`, one size at "
        "a time, with CONSUL_HTTP_ADDR pointing at the agent. The file has one `[templates.t1]` "
        "table: `{% for name in [...N services...] %}{{ name }}:{% for i in service(name) %} "
        "{{ i.endpoint }}{% endfor %}{% endfor %}`.",
        changes.load_note(load_at_start),
    )
    return Section(TITLE, (table(results),), method, summary)
