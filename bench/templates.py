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
from typing import Dict, List, Sequence, Tuple

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
    percentile,
    wait_for,
)
from bench.discovery import POOL, HttpCounter, _ProxyHandler, register_bulk

TITLE = "Templates: many files from one catalog (issue 6)"
TEMPLATE_COUNTS = (1, 10, 100)
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
    first_render: float  # s from start until every file was there
    applies: List[float]  # ms, catalog change -> every file rewritten
    missed: int
    held: Dict[str, int]  # blocking service reads in flight at rest, by service
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
) -> Result:
    workdir = ctx.scratch / f"templates-{count}"
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

        wait_for(all_written, 300, 0.01, f"{count} templates rendered")
        first_render = time.monotonic() - t0
        time.sleep(2.0)  # every dependency's first answer is in, and its blocking query sent
        held = proxy.services_held()
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
    return Result(count, first_render, applies, missed, held, unchanged, changed, threads, rss_kb)


# --- the family ---------------------------------------------------------------------------------


def run(ctx: Context) -> Section:
    service_count = ctx.reps(1000, 100)
    changes = ctx.reps(60, 6)
    services = [f"svc{n:04d}" for n in range(service_count)]
    results: List[Result] = []
    with Processes() as procs:
        agent = ConsulDev(procs, ctx.scratch / "consul-templates")
        proxy = HeldCounter(agent.ports["http"])
        try:
            register_bulk(agent, services, {name: 20000 + j for j, name in enumerate(POOL)})
            for count in TEMPLATE_COUNTS:
                t = time.monotonic()
                results.append(measure(ctx, procs, agent, proxy, count, services, changes))
                print(f"({count} templates: {time.monotonic() - t:.0f} s)", flush=True)
        finally:
            proxy.close()
            agent.close()
            procs.stop(agent.proc)
        leftovers = procs.leftovers()
    if leftovers:
        print(f"templates: processes left behind: {leftovers}", flush=True)
    return Section(
        TITLE,
        (apply_table(results, service_count), held_table(results, service_count)),
        method(ctx, service_count),
        targets(results, service_count),
    )


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
            fmt(r.first_render, 1),
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
            "write and atomic rename. Templates have no check and no reload command here; those cost "
            "what the commands cost.",
            "first render: from `basenode run` until every destination existed (start-up, first "
            "read of every dependency, first render of every template).",
        ),
    )


def held_table(results: Sequence[Result], service_count: int) -> Table:
    rows = []
    for r in results:
        per = [r.held.get(s, 0) for s in (f"svc{n:04d}" for n in range(service_count))]
        rows.append(
            (
                str(r.count),
                f"{service_count:,}",
                f"{sum(per):,}",
                fmt(sum(per) / service_count, 2),
                f"{min(per)}-{max(per)}",
                str(r.changed_requests),
                str(r.unchanged_requests),
                str(r.threads),
                fmt(r.rss_kb / 1024.0, 1),
            )
        )
    return Table(
        "Blocking queries held open per distinct dependency (target: exactly 1)",
        (
            "templates",
            "dependencies",
            "held open",
            "per dependency",
            "range",
            "reads of the changed one",
            "reads of the others",
            "sync threads",
            "sync RSS (MiB)",
        ),
        tuple(rows),
        (
            "held open: blocking reads (`GET /v1/health/service/NAME?index=...`) in flight at the "
            "proxy 2 s after every file was first written, with nothing changing; range: fewest and "
            "most held for one service.",
            "reads during the changes of the render-and-apply table: of the service that changed (one "
            "wake per change is the floor), and of all the others together (0: a dependency that did "
            "not change is not asked again).",
            "sync threads and RSS: the `basenode sync` process (VmRSS and Threads of /proc) at the "
            "same moment as `held open`.",
        ),
    )


def method(ctx: Context, service_count: int) -> Tuple[str, ...]:
    return (
        "One `consul agent -dev` (Consul 1.8.7, loopback) holds "
        f"{service_count:,} services x {len(POOL)} instances (catalog transactions, external nodes). "
        f"basenode runs as `{ctx.python} dist/basenode run --no-consul --no-haproxy --config FILE` "
        "with CONSUL_HTTP_ADDR pointing at a loopback proxy in front of the agent (the discovery "
        "benchmark's forwarding proxy, which also counts what is in flight). The file has N "
        "`[templates.tK]` tables, each with its own source file: `{% for name in [...all services...] %}"
        "{{ name }}:{% for i in service(name) %} {{ i.endpoint }}{% endfor %}` and a destination of "
        "its own. One basenode per N, one after the other, against the same agent and proxy.",
    )


def targets(results: Sequence[Result], service_count: int) -> Tuple[str, ...]:
    def held_ok(r: Result) -> bool:
        return len(r.held) == service_count and set(r.held.values()) == {1}

    ok = all(held_ok(r) for r in results)
    worst = max((max(r.held.values(), default=0) for r in results), default=0)
    line = (
        f"Target (issue 6): exactly one blocking query per distinct dependency: "
        f"{'met' if ok else 'MISSED'} ("
        + "; ".join(
            f"{r.count} templates: {sum(r.held.values()):,} held for {service_count:,}" for r in results
        )
        + (f"; at most {worst} for one dependency" if not ok else "")
        + ")."
    )
    timing = "Render and apply, p50 (p99): " + "; ".join(
        f"{r.count} template{'s' if r.count > 1 else ''} {fmt(percentile(r.applies, 50))} ms "
        f"({fmt(percentile(r.applies, 99))} ms)"
        for r in results
    )
    return (line, timing + f", with {service_count:,} shared service dependencies.")
