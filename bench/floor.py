"""Propagation beside its floor (issue 11): agent registration -> HAProxy's runtime state, in ratios.

One `consul agent -dev` and one basenode (`basenode run --no-consul`) routing `web`. A change is an agent
registration of a second instance of `web` (or its deregistration), the way services are registered in
practice. Three observers see each change, at once, in processes of their own (bench/observe.py):
- the floor: a bare blocking query on /v1/health/service/web?passing on the same agent, which wakes when
  the agent knows; nothing that reads Consul can route sooner;
- HAProxy's runtime state: `show servers state web` on basenode's stats socket, polled every 1 ms;
- traffic: probes through basenode's HAProxy frontend (the discovery family's probes).

Then the same change with 1 service x 5 instances and with 1,000 services x 5 instances routed (the cost
of a change should follow the change, not the catalog), and failed requests under load during 200
changes (the discovery family's load phase, basenode only).

Re-measure on other code with one command:
    .venv/bin/python bench/run.py --only floor --out docs/benchmarks.md      (or `make bench-floor`)
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple

from bench import common, discovery
from bench.changes import (
    GAP,
    SCALE_GAP,
    SERVICE,
    TIMEOUT,
    Timings,
    floor_and_runtime,
    load_note,
    start_routed,
    stop_all,
    time_changes,
)
from bench.common import ConsulDev, Context, Processes, Section, Table, fmt, pct, percentile
from bench.discovery import POOL

TITLE = "Propagation beside the floor: agent registration -> HAProxy runtime state (issue 11)"


def row(label: str, values: Sequence[float], floor: Optional[Sequence[float]] = None) -> Tuple[str, ...]:
    cells = [label, str(len(values))]
    cells += [pct(values, 50), pct(values, 90), pct(values, 99, min_samples=100), fmt(max(values or [0.0]))]
    if floor is None:
        return (*cells, "", "")
    p99 = percentile(floor, 99) if len(floor) >= 100 else float("nan")
    return (
        *cells,
        common.ratio(percentile(values, 50), percentile(floor, 50)),
        common.ratio(percentile(values, 99), p99),
    )


PROPAGATION_HEADERS = (
    "observer",
    "changes",
    "p50",
    "p90",
    "p99",
    "max",
    "p50 / floor p50",
    "p99 / floor p99",
)


def propagation_table(t: Timings, changes: int) -> Table:
    rows = [
        row("floor: blocking query on /v1/health/service/web wakes", t.floor, t.floor),
        row("**basenode: HAProxy runtime state (`show servers state web`)**", t.runtime, t.floor),
        row("basenode: traffic follows (probes through HAProxy)", t.traffic, t.floor),
    ]
    for added, label in ((True, "registrations"), (False, "deregistrations")):
        rows.append(row(f"floor, {label} only", t.of(t.floor, added), t.of(t.floor, added)))
        rows.append(
            row(f"basenode runtime state, {label} only", t.of(t.runtime, added), t.of(t.floor, added))
        )
    rows.append(row("basenode's log: `applied by runtime in X ms` (from its wake)", t.logged))
    notes = (
        f"{changes} changes at random moments 0.05-0.15 s apart after the previous one was seen by all "
        "three observers: an agent registration of a second instance of `web` "
        "(`PUT /v1/agent/service/register`, with a TTL check registered passing) and its deregistration, "
        "in turn; the clock starts just before the agent call. `web` keeps one `base` instance."
        + (f" {t.missed} changes not seen by all observers within {TIMEOUT:g} s." if t.missed else "")
        + (f" {t.reloads} applies were reloads." if t.reloads else ""),
        "floor: a bare blocking query (`?passing&index=N`, again at once after every answer) on the same "
        "agent, in a process of its own: the time its answer showing the new set of ports was read. "
        "runtime state: `show servers state web` on basenode's stats socket every 1 ms in another process "
        "(the server counts when it is running with no maintenance or drain bit); the time the first "
        "answer showing it was read. traffic: a fresh connection through the frontend every ~2 ms, the "
        "send time of the first answer from the new instance, or of the first of 6 misses in a row of "
        "the removed one.",
        "p50 / floor p50 and p99 / floor p99: the row's percentile over the floor's, same changes. "
        "Target (issue 11): runtime state p50 <= 2x the floor's p50 + 2 ms, p99 <= 3x the floor's "
        "p99 + 5 ms.",
    )
    return Table(
        "Propagation: agent registration -> seen by each observer (ms), same changes",
        PROPAGATION_HEADERS,
        tuple(rows),
        notes,
    )


def propagation(ctx: Context, procs: Processes, agent: ConsulDev, backends: Mapping[str, int]) -> Timings:
    agent.agent_register(SERVICE, f"{SERVICE}-base", backends["base"])
    base = frozenset({backends["base"]})
    ports = {SERVICE: common.free_port()}
    subject, seen_by = start_routed(ctx, procs, agent, ctx.scratch / "floor-prop", ports, SERVICE, base)
    try:
        return time_changes(
            agent, subject, SERVICE, base, backends, ctx.reps(400, 20), GAP, seen_by, random.Random()
        )
    finally:
        stop_all(procs, subject, seen_by)


# Stands in for `haproxy` (--haproxy-bin): notes each run, then execs HAProxy with the same arguments.
COUNTING_HAPROXY = """#!/bin/sh
case " $* " in *" -c "*) echo check >> {log} ;; *) echo other >> {log} ;; esac
exec {haproxy} "$@"
"""


@dataclass(frozen=True)
class Checks:
    timings: Timings
    checks: int  # `haproxy -c` runs during the changes
    others: int  # any other HAProxy start (a reload's new master exec, a restart)


def haproxy_runs(log: Path) -> Tuple[int, int]:
    lines = log.read_text().split() if log.exists() else []
    return lines.count("check"), lines.count("other")


def check_runs(ctx: Context, procs: Processes, agent: ConsulDev, backends: Mapping[str, int]) -> Checks:
    """Server-only changes (an instance registered, deregistered) with `haproxy` counting its runs."""
    workdir = ctx.scratch / "floor-checks"
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "haproxy-runs.log"
    wrapper = workdir / "haproxy"
    wrapper.write_text(COUNTING_HAPROXY.format(log=log, haproxy=shutil.which("haproxy")))
    wrapper.chmod(0o755)
    service = "counted"
    agent.agent_register(service, f"{service}-base", backends["base"])
    base = frozenset({backends["base"]})
    ports = {service: common.free_port()}
    flags = ("--haproxy-bin", str(wrapper))
    subject, seen_by = start_routed(ctx, procs, agent, workdir, ports, service, base, flags)
    try:
        time.sleep(1.0)  # past start-up's own runs
        checks0, others0 = haproxy_runs(log)
        rng = random.Random()
        timings = time_changes(
            agent, subject, service, base, backends, ctx.reps(100, 10), GAP, seen_by, rng, probe=False
        )
        time.sleep(1.0)
        checks1, others1 = haproxy_runs(log)
    finally:
        stop_all(procs, subject, seen_by)
    return Checks(timings, checks1 - checks0, others1 - others0)


def checks_table(c: Checks) -> Table:
    t = c.timings
    changes = len(t.runtime) + t.missed
    return Table(
        "HAProxy processes started during server-only changes",
        (
            "changes",
            "applies by runtime API",
            "applies by reload",
            "`haproxy -c` runs",
            "per change",
            "other starts",
        ),
        (
            (
                str(changes),
                str(len(t.logged)),
                str(t.reloads),
                str(c.checks),
                fmt(c.checks / max(changes, 1), 2),
                str(c.others),
            ),
        ),
        (
            f"{changes} changes as in the propagation table (an instance registered with the agent, then "
            "deregistered, in turn) on a basenode of its own whose `--haproxy-bin` is a shell script that "
            "notes each run (`-c` among its arguments or not) and execs HAProxy. Target (issue 11): 0 "
            "`haproxy -c` runs for server-only changes. other starts: HAProxy started anew (a reload's "
            "re-exec of the master, a restart).",
        ),
    )


@dataclass(frozen=True)
class Scale:
    routes: int
    timings: Timings
    label: str  # how the routes' services are read
    started: float  # s from basenode's start until the changed route's servers were all in HAProxy


DEFAULT_BUDGET_LABEL = ", default budget"
DIRECT_LABEL = ", a query per route"
DIRECT_MAX_CONNS = 1100
DIRECT_AGENT_LIMIT = 4096


def scale_case(
    ctx: Context,
    procs: Processes,
    agent: ConsulDev,
    backends: Mapping[str, int],
    routes: int,
    flags: Sequence[str] = (),
    label: str = "",
) -> Scale:
    """`routes` services x 5 instances, all routed; changes on the one in the middle."""
    services = [f"svc{n:04d}" for n in range(routes)]
    discovery.register_bulk(agent, services, backends)
    target = services[len(services) // 2]
    base = frozenset(backends[name] for name in POOL)
    ports = dict(zip(services, common.free_ports(routes)))
    t0 = time.monotonic()
    workdir = ctx.scratch / f"floor-scale-{routes}"
    subject, seen_by = start_routed(ctx, procs, agent, workdir, ports, target, base, flags)
    started = time.monotonic() - t0
    try:
        time.sleep(2.0)  # past start-up
        timings = time_changes(
            agent, subject, target, base, backends, ctx.reps(100, 10), SCALE_GAP, seen_by, random.Random()
        )
    finally:
        stop_all(procs, subject, seen_by)
    return Scale(routes, timings, label, started)


def scale_table(cases: Sequence[Scale]) -> Table:
    ref = cases[0].timings
    rows = []
    for case in cases:
        t = case.timings
        rows.append(
            (
                f"{case.routes:,} x {len(POOL)}{case.label}",
                *floor_and_runtime(t),
                pct(t.logged, 50),
                pct(t.logged, 99, min_samples=100),
                pct(t.traffic, 50),
                pct(t.traffic, 99, min_samples=100),
                common.ratio(percentile(t.runtime, 50), percentile(t.floor, 50)),
                common.ratio(percentile(t.runtime, 50), percentile(ref.runtime, 50)),
                common.ratio(percentile(t.traffic, 50), percentile(ref.traffic, 50)),
            )
        )
    notes = (
        "Services x instances routed (one route per service, instances on 5 external catalog nodes, "
        "written with catalog transactions); each change is the propagation table's agent registration "
        f"of a 6th instance of one service (or its deregistration), at random moments "
        f"{SCALE_GAP[0]:g}-{SCALE_GAP[1]:g} s apart. 1 x 5 runs on the propagation table's agent "
        f"(a small catalog), each {cases[-1].routes:,} x 5 on an agent of its own.",
        f"{DEFAULT_BUDGET_LABEL}: the default watch.max_conns (100) leaves most routed services, the "
        "changed one among them, on the one catalog-wide watch (a summary of every service read on "
        "each catalog change: its cost grows with the catalog by design); "
        f"{DIRECT_LABEL}: `--watch-max-conns {DIRECT_MAX_CONNS}` and the agent's "
        f"http_max_conns_per_client raised to {DIRECT_AGENT_LIMIT}, so every route has a blocking query "
        "of its own.",
        "floor and runtime state as in the propagation table; applied: basenode's own "
        "`applied by runtime in X ms` (render done -> runtime API applied and verified, `haproxy -c` "
        "included where it runs); traffic: probes through the changed route's frontend, 6 servers in "
        "round robin (a probe reaches the new one within 6 probes).",
        "Target (issue 11): at 1,000 x 5 within 2x of the same change with 1 service (the columns "
        "`vs 1 x 5`).",
        *(
            f"{c.routes:,} x 5{c.label}: basenode had every server of the changed route in HAProxy "
            f"{c.started:.1f} s after it started"
            + (f"; {c.timings.reloads} applies were reloads" if c.timings.reloads else "")
            + "."
            for c in cases
        ),
    )
    return Table(
        "An instance change: 1 service vs 1,000 services routed (ms)",
        (
            "services x instances",
            "changes",
            "floor p50",
            "floor p99",
            "runtime state p50",
            "runtime state p99",
            "applied (log) p50",
            "applied (log) p99",
            "traffic p50",
            "traffic p99",
            "runtime p50 / floor p50",
            "runtime p50 vs 1 x 5",
            "traffic p50 vs 1 x 5",
        ),
        tuple(rows),
        notes,
    )


def targets(
    prop: Timings, cases: Sequence[Scale], load: Mapping[str, tuple], checks: Checks
) -> Tuple[str, ...]:
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    f50, f99 = percentile(prop.floor, 50), percentile(prop.floor, 99)
    r50, r99 = percentile(prop.runtime, 50), percentile(prop.runtime, 99)
    one = cases[0].timings
    o50, oe50 = percentile(one.runtime, 50), percentile(one.traffic, 50)

    def scale_target(case: Scale) -> str:
        b50, e50 = percentile(case.timings.runtime, 50), percentile(case.timings.traffic, 50)
        return (
            f"Target (issue 11): an instance change at {case.routes:,} x 5{case.label} within 2x of 1 x 5: "
            f"{verdict(b50 <= 2 * o50 and e50 <= 2 * oe50)} (runtime state p50 {b50:.1f} vs {o50:.1f} ms, "
            f"{b50 / o50:.2f}x; end to end p50 {e50:.1f} vs {oe50:.1f} ms, {e50 / oe50:.2f}x)."
        )

    changes, wrk, _ = load[discovery.BASENODE]
    return (
        f"Target (issue 11): runtime state p50 <= 2x the floor's p50 + 2 ms: {verdict(r50 <= 2 * f50 + 2)} "
        f"(basenode {r50:.1f} ms = {r50 / f50:.1f}x the floor's {f50:.1f} ms, over "
        f"{len(prop.runtime)} changes).",
        f"Target (issue 11): runtime state p99 <= 3x the floor's p99 + 5 ms: {verdict(r99 <= 3 * f99 + 5)} "
        f"(basenode {r99:.1f} ms = {r99 / f99:.1f}x the floor's {f99:.1f} ms).",
        *(scale_target(case) for case in cases[1:]),
        f"Target (issue 11): 0 failed requests under load during {changes} changes: "
        f"{verdict(wrk.failed == 0)} ({wrk.failed} of {wrk.requests:,}).",
        f"Target (issue 11): a server-only change spawns no `haproxy -c`: {verdict(checks.checks == 0)} "
        f"({checks.checks} runs during {len(checks.timings.runtime) + checks.timings.missed} changes).",
    )


def run(ctx: Context) -> Section:
    load_at_start = common.load_average()
    for tool in ("haproxy", discovery.WRK):
        if not shutil.which(tool):
            raise RuntimeError(f"{tool} not found (make system-deps)")
    with Processes() as procs:
        backends = common.start_backends(
            procs, discovery.BACKEND_NAMES, ctx.python, ctx.scratch / "floor-backends.log"
        )
        agent = ConsulDev(procs, ctx.scratch / "floor-consul")
        try:
            t = time.monotonic()
            prop = propagation(ctx, procs, agent, backends)
            print(f"(propagation: {time.monotonic() - t:.0f} s)", flush=True)
            t = time.monotonic()
            checks = check_runs(ctx, procs, agent, backends)
            print(f"(haproxy -c count: {time.monotonic() - t:.0f} s)", flush=True)
            t = time.monotonic()
            cases = [scale_case(ctx, procs, agent, backends, 1)]
            print(f"(1 x 5: {time.monotonic() - t:.0f} s)", flush=True)
            t = time.monotonic()
            load_table, load = discovery.load_phase(ctx, procs, agent, backends, (discovery.BASENODE,))
            print(f"(load: {time.monotonic() - t:.0f} s)", flush=True)
        finally:
            agent.close()
            procs.stop(agent.proc)
        for name, hcl, flags, label in (
            ("floor-consul-scale", (), (), DEFAULT_BUDGET_LABEL),
            (
                "floor-consul-direct",
                (f"limits {{ http_max_conns_per_client = {DIRECT_AGENT_LIMIT} }}",),
                ("--watch-max-conns", str(DIRECT_MAX_CONNS)),
                DIRECT_LABEL,
            ),
        ):
            big = ConsulDev(procs, ctx.scratch / name, hcl=hcl)
            try:
                t = time.monotonic()
                cases.append(scale_case(ctx, procs, big, backends, ctx.reps(1000, 100), flags, label))
                print(f"(scale{label}: {time.monotonic() - t:.0f} s)", flush=True)
            finally:
                big.close()
                procs.stop(big.proc)
    method = (
        "One `consul agent -dev` (Consul 1.8.7, loopback) and one process of HTTP backends; basenode "
        f"runs as `{ctx.python} dist/basenode run --no-consul --routes SERVICE:PORT/http` with "
        "CONSUL_HTTP_ADDR pointing at the agent, one subject at a time. Each observer runs in a "
        "process of its own (bench/observe.py) and stamps what it sees with CLOCK_MONOTONIC, the clock "
        "the harness starts each change on. Re-measure with `make bench-floor` "
        "(`.venv/bin/python bench/run.py --only floor --out docs/benchmarks.md`).",
        load_note(load_at_start),
    )
    tables = (
        propagation_table(prop, len(prop.runtime) + prop.missed),
        checks_table(checks),
        scale_table(cases),
        load_table,
    )
    return Section(TITLE, tables, method, targets(prop, cases, load, checks))
