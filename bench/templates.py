"""Template figures of issue 6: many files rendered from one catalog, and what they cost Consul.

basenode runs as `basenode run --no-consul --no-haproxy --config FILE` whose file has N templates
([templates.t1] ... [templates.tN], N = 1, 10, 100), each a file of its own that calls service() for
the same 1,000 services (5 instances each) and writes every instance's endpoint: 1,000 distinct
dependencies, shared by all N templates. Between basenode and the `consul agent -dev` sits a loopback
HTTP proxy that counts, per dependency, the requests and the blocking queries held open.

Two tables: render-and-apply time (a catalog change -> every one of the N destination files rewritten)
and blocking queries held open per distinct dependency (target: exactly one, however many templates
share it).

Run alone: `.venv/bin/python bench/run.py --only templates --out docs/benchmarks.md` (the sections of
the other families in that file are kept).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from bench import common
from bench.common import (
    ConsulDev,
    Context,
    Processes,
    Section,
    Table,
    clean_env,
    fmt,
    free_port,
    pct,
)
from bench.discovery import POOL, HttpCounter, _ProxyHandler, register_bulk
from tests.support.waiting import eventually

TITLE = "Templates: many files from one catalog (issue 6)"
TEMPLATE_COUNTS = (1, 10, 100)
RAISED_LIMIT = 4096  # limits.http_max_conns_per_client of the agent for the measured rows (default 200)
SERVICE_PATH = "/v1/health/service/"


# --- the counting proxy -------------------------------------------------------------------------


class _HeldHandler(_ProxyHandler):
    """The discovery benchmark's forwarding handler, telling the server when each request ends."""

    def _held(self) -> None:
        server: HeldCounter = self.server  # type: ignore[assignment]
        key = server.begin(self.command, self.path)
        try:
            self._forward()
        finally:
            server.end(key)

    do_GET = do_PUT = do_POST = do_DELETE = _held


class HeldCounter(HttpCounter):
    """A loopback proxy in front of the agent: requests per dependency and those in flight right now.

    A dependency is the request's path without its query (`/v1/health/service/svc0001`); a request
    in flight with `index=` in its query is a blocking query held open by the agent."""

    def __init__(self, upstream_port: int) -> None:
        self.requests: Dict[str, int] = {}
        self.held: Dict[str, int] = {}
        super().__init__(upstream_port)
        self.RequestHandlerClass = _HeldHandler  # before any request: basenode starts afterwards

    def begin(self, method: str, path: str) -> str:
        dependency, _, query = path.partition("?")
        key = f"{method} {dependency}" + (" blocking" if "index=" in query else "")
        with self.lock:
            self.requests[key] = self.requests.get(key, 0) + 1
            self.held[key] = self.held.get(key, 0) + 1
        return key

    def end(self, key: str) -> None:
        with self.lock:
            self.held[key] -= 1

    def services_held(self) -> Dict[str, int]:
        """Blocking service reads in flight now, by service."""
        prefix = f"GET {SERVICE_PATH}"
        with self.lock:
            return {
                k[len(prefix) : -len(" blocking")]: n
                for k, n in self.held.items()
                if k.startswith(prefix) and k.endswith(" blocking") and n
            }

    def service_requests(self) -> Dict[str, int]:
        """Service reads so far (blocking or not), by service."""
        prefix = f"GET {SERVICE_PATH}"
        found: Dict[str, int] = {}
        with self.lock:
            for k, n in self.requests.items():
                if k.startswith(prefix):
                    name = k[len(prefix) :].split(" ")[0]
                    found[name] = found.get(name, 0) + n
        return found


# --- the subject --------------------------------------------------------------------------------


def template_text(number: int, services: Sequence[str]) -> str:
    names = ", ".join(f'"{s}"' for s in services)
    return (
        f"# template {number}: every instance of {len(services)} services\n"
        f"{{% for name in [{names}] %}}\n"
        "{{ name }}:{% for i in service(name) %} {{ i.endpoint }}{% endfor %}\n"
        "{% endfor %}\n"
    )


def write_config(workdir: Path, count: int, services: Sequence[str]) -> Tuple[Path, List[Path]]:
    """N template files and the basenode.toml that renders each to a file of its own (no check, no reload)."""
    (workdir / "out").mkdir(parents=True, exist_ok=True)
    lines, outputs = [], []
    for n in range(1, count + 1):
        source = workdir / f"t{n}.j2"
        source.write_text(template_text(n, services))
        outputs.append(workdir / "out" / f"t{n}.txt")
        lines += [f"[templates.t{n}]", f'source = "{source}"', f'destination = "{outputs[-1]}"', ""]
    config = workdir / "basenode.toml"
    config.write_text("\n".join(lines))
    return config, outputs


@dataclass
class Result:
    count: int
    limit: str  # the agent's connection limit per client address, as shown
    first_render: Optional[float]  # s from start until every file was there; None: not within the timeout
    applies: List[float]  # ms, catalog change -> every file rewritten
    missed: int
    held: Dict[str, int]  # blocking service reads in flight at rest, by service
    failed_reads: int  # basenode's "read failed" warnings until then
    unchanged_requests: int  # reads of the services that did not change, during the changes
    changed_requests: int  # reads of the one that did
    threads: int  # of the sync process, at rest
    rss_kb: int


def sizes(paths: Sequence[Path]) -> List[int]:
    found = []
    for path in paths:
        try:
            found.append(os.stat(path).st_size)
        except FileNotFoundError:
            found.append(-1)
    return found


def sync_process(procs: Processes, proc: object) -> int:
    for pid in procs.remember_descendants(proc):  # type: ignore[arg-type]
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"sync" in argv:
            return pid
    raise RuntimeError("no basenode sync process")


def measure(
    ctx: Context,
    procs: Processes,
    agent: ConsulDev,
    proxy: HeldCounter,
    count: int,
    services: Sequence[str],
    changes: int,
    timeout: float,
    limit: str,
) -> Result:
    workdir = ctx.scratch / f"templates-{count}-{limit.split()[0].replace(',', '')}"
    config, outputs = write_config(workdir, count, services)
    env = {k: v for k, v in clean_env().items() if not k.startswith(("BASENODE_", "CONSUL_"))}
    env.update(CONSUL_HTTP_ADDR=f"127.0.0.1:{proxy.port}", SHIV_ROOT=str(ctx.scratch / "shiv"))
    argv = [ctx.python, str(ctx.zipapp), "run", "--no-consul", "--no-haproxy", "--config", str(config)]
    argv += ["--state-dir", str(workdir / "state"), "--status-addr", f"127.0.0.1:{free_port()}"]
    log = workdir / "basenode.log"
    t0 = time.monotonic()
    proc = procs.start(argv, env=env, log=log)
    try:

        def all_written() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"basenode exited with {proc.returncode}; see {log}")
            return min(sizes(outputs)) > 0

        try:
            eventually(all_written, timeout, 0.01, f"{count} templates rendered")
            first_render: Optional[float] = time.monotonic() - t0
        except AssertionError:  # timed out; a basenode that exited raised RuntimeError
            if proc.poll() is not None:
                raise
            first_render, changes = None, 0
        time.sleep(2.0)  # every dependency's first answer is in, and its blocking query sent
        held = proxy.services_held()
        failed_reads = log.read_text(errors="replace").count(" read failed")
        sync_pid = sync_process(procs, proc)
        threads = common.proc_kb(f"/proc/{sync_pid}/status", ("Threads",)).get("Threads", 0)
        rss_kb = common.memory_of(sync_pid).rss_kb

        target = services[len(services) // 2]
        before = proxy.service_requests()
        rng = random.Random()
        applies: List[float] = []
        missed = 0
        for i in range(changes):
            time.sleep(rng.uniform(0.1, 0.3))
            was = sizes(outputs)
            t = time.monotonic()
            if i % 2 == 0:
                agent.catalog_register("ext-0", target, f"{target}-extra", 30000 + i)
            else:
                agent.catalog_deregister("ext-0", f"{target}-extra")
            deadline = t + 60.0
            while True:
                now = sizes(outputs)
                if all(a != b for a, b in zip(now, was)):
                    applies.append((time.monotonic() - t) * 1000)
                    break
                if time.monotonic() > deadline:
                    missed += 1
                    break
                time.sleep(0.001)
        after = proxy.service_requests()
    finally:
        procs.stop(proc)
    changed = after.get(target, 0) - before.get(target, 0)
    unchanged = sum(after.values()) - sum(before.values()) - changed
    return Result(
        count, limit, first_render, applies, missed, held, failed_reads, unchanged, changed, threads, rss_kb
    )


# --- the family ---------------------------------------------------------------------------------


def consul_with_connection_limit(ctx: Context, limit: int) -> str:
    """A consul "binary" that is the real one with `limits.http_max_conns_per_client` set."""
    real = common.consul_binary()
    if not real:
        raise RuntimeError("consul not found: run `make system-deps`")
    wrapper = ctx.scratch / f"consul-limit-{limit}"
    wrapper.write_text(
        f"#!/bin/sh\nexec {real} \"$@\" -hcl 'limits {{ http_max_conns_per_client = {limit} }}'\n"
    )
    wrapper.chmod(0o755)
    return str(wrapper)


def one_subject(
    ctx: Context,
    procs: Processes,
    count: int,
    services: Sequence[str],
    changes: int,
    binary: Optional[str],
    timeout: float,
) -> Result:
    """A fresh agent and proxy for each subject: a stopped basenode's blocking queries would stay held
    at the agent (and count against its connection limit) until their `wait` ran out."""
    agent = ConsulDev(
        procs, ctx.scratch / f"consul-{count}-{'default' if binary is None else 'raised'}", binary
    )
    proxy = HeldCounter(agent.ports["http"])
    try:
        register_bulk(agent, services, {name: 20000 + j for j, name in enumerate(POOL)})
        limit = "default (200)" if binary is None else f"{RAISED_LIMIT:,}"
        return measure(ctx, procs, agent, proxy, count, services, changes, timeout, limit)
    finally:
        proxy.close()
        agent.close()
        procs.stop(agent.proc)


def run(ctx: Context) -> Section:
    service_count = ctx.reps(1000, 100)
    services = [f"svc{n:04d}" for n in range(service_count)]
    results: List[Result] = []
    with Processes() as procs:
        # What a user's agent does (basenode's own agent config keeps Consul's default limit, 200
        # connections per client address): one template, given a minute.
        t = time.monotonic()
        default = one_subject(ctx, procs, 1, services, ctx.reps(10, 2), None, ctx.reps(60.0, 30.0))
        print(f"(1 template, default connection limit: {time.monotonic() - t:.0f} s)", flush=True)
        raised = consul_with_connection_limit(ctx, RAISED_LIMIT)
        for count in TEMPLATE_COUNTS:
            t = time.monotonic()
            changes = ctx.reps(60 if count < 100 else 30, 6)
            results.append(one_subject(ctx, procs, count, services, changes, raised, 300.0))
            print(f"({count} templates: {time.monotonic() - t:.0f} s)", flush=True)
        leftovers = procs.leftovers()
    if leftovers:
        print(f"templates: processes left behind: {leftovers}", flush=True)
    return Section(
        TITLE,
        (apply_table(results, service_count), held_table([default, *results], service_count)),
        method(ctx, service_count),
        targets(default, results, service_count),
    )


def plural(count: int) -> str:
    return f"{count} template" + ("s" if count != 1 else "")


def seconds(value: Optional[float]) -> str:
    return "none" if value is None else fmt(value, 1)


def apply_table(results: Sequence[Result], service_count: int) -> Table:
    rows = tuple(
        (
            str(r.count),
            f"{service_count:,}",
            str(len(r.applies)) + (f" ({r.missed} missed)" if r.missed else ""),
            pct(r.applies, 50),
            pct(r.applies, 90),
            pct(r.applies, 99, min_samples=20),
            fmt(max(r.applies) if r.applies else float("nan")),
            seconds(r.first_render),
        )
        for r in results
    )
    return Table(
        f"Render and apply: catalog change -> every file rewritten (ms), templates sharing "
        f"{service_count:,} service dependencies",
        ("templates", "dependencies", "changes", "p50", "p90", "p99", "max", "first render (s)"),
        rows,
        (
            "Each change registers a 6th instance of one service (straight into the catalog) or "
            "deregisters it, at random moments 0.1-0.3 s apart; every template uses that service, so "
            "every file changes. The time runs from the catalog write until the size of every "
            "destination file has changed (polled every millisecond): the blocking query's wake, the "
            "debounce, one render of each template from the shared data, and each file's candidate "
            "write and atomic rename. Templates have no check and no reload command here; those add "
            "what the commands cost. p99 only from 20 changes up.",
            "first render: from `basenode run` until every destination existed (start-up, first "
            "read of every dependency, first render of every template).",
            f"The agent of these rows accepts {RAISED_LIMIT:,} connections per client address "
            "(`limits { http_max_conns_per_client }`): one blocking query is one connection, and with "
            "Consul's default of 200 these templates do not render at all (next table).",
        ),
    )


def held_table(results: Sequence[Result], service_count: int) -> Table:
    rows = []
    for r in results:
        per = [r.held.get(s, 0) for s in (f"svc{n:04d}" for n in range(service_count))]
        rows.append(
            (
                str(r.count),
                r.limit,
                f"{service_count:,}",
                seconds(r.first_render),
                f"{sum(per):,}",
                fmt(sum(per) / service_count, 2),
                f"{min(per)}-{max(per)}",
                f"{r.failed_reads:,}",
                str(r.changed_requests) if r.first_render is not None else "-",
                str(r.unchanged_requests) if r.first_render is not None else "-",
                str(r.threads),
                fmt(r.rss_kb / 1024.0, 1),
            )
        )
    return Table(
        "Blocking queries held open per distinct dependency (target: exactly 1)",
        (
            "templates",
            "agent connection limit",
            "dependencies",
            "first render (s)",
            "held open",
            "per dependency",
            "range",
            "failed reads",
            "reads of the changed one",
            "reads of the others",
            "sync threads",
            "sync RSS (MiB)",
        ),
        tuple(rows),
        (
            "held open: blocking reads (`GET /v1/health/service/NAME?index=...`) in flight at the "
            "proxy 2 s after every file was first written (or after the wait for that ran out), with "
            "nothing changing; range: fewest and most held for one service. failed reads: basenode's "
            "`read failed` warnings until then.",
            "reads during the changes of the render-and-apply table: of the service that changed (one "
            "wake per change is the floor), and of all the others together (0: a dependency that did "
            "not change is not asked again).",
            "sync threads and RSS: the `basenode sync` process (Threads and VmRSS of /proc) at the "
            "same moment as `held open`.",
            "Default limit row: the agent as basenode runs it (Consul's default, 200 connections per "
            "client address), one template, given "
            "a minute to render.",
        ),
    )


def method(ctx: Context, service_count: int) -> Tuple[str, ...]:
    return (
        "Each subject gets its own `consul agent -dev` (Consul 1.8.7, loopback) holding "
        f"{service_count:,} services x {len(POOL)} instances (catalog transactions, external nodes), "
        "and its own proxy: a stopped subject's blocking queries would otherwise stay held at the agent "
        "until their wait ran out. "
        f"basenode runs as `{ctx.python} dist/basenode run --no-consul --no-haproxy --config FILE` "
        "with CONSUL_HTTP_ADDR pointing at a loopback proxy in front of the agent (the discovery "
        "benchmark's forwarding proxy, which also counts what is in flight). The file has N "
        "`[templates.tK]` tables, each with its own source file: `{% for name in [...all services...] %}"
        "{{ name }}:{% for i in service(name) %} {{ i.endpoint }}{% endfor %}` and a destination of "
        "its own.",
    )


def targets(default: Result, results: Sequence[Result], service_count: int) -> Tuple[str, ...]:
    def held_ok(r: Result) -> bool:
        return len(r.held) == service_count and set(r.held.values()) == {1}

    ok = all(held_ok(r) for r in results)
    line = (
        f"Target (issue 6): exactly one blocking query per distinct dependency "
        f"(agent limit {RAISED_LIMIT:,}): {'met' if ok else 'MISSED'} ("
        + "; ".join(
            f"{plural(r.count)}: {sum(r.held.values()):,} held for {service_count:,}" for r in results
        )
        + ")."
    )
    default_line = (
        f"With Consul's default connection limit (200 per client address), 1 template over "
        f"{service_count:,} services: "
        + (
            f"rendered in {default.first_render:.1f} s"
            if default.first_render is not None
            else f"no file within the minute given ({sum(default.held.values()):,} queries held, "
            f"{default.failed_reads:,} failed reads): one connection per dependency does not fit"
        )
        + "."
    )
    timing = "Render and apply, p50 (p99): " + "; ".join(
        f"{plural(r.count)} {pct(r.applies, 50)} ms ({pct(r.applies, 99, min_samples=20)} ms)"
        for r in results
    )
    return (line, default_line, timing + f", with {service_count:,} shared service dependencies.")
