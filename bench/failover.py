"""Failover figures of issue 15: a route's local instances gone -> traffic served by another datacenter.

Two `consul agent -dev` servers on loopback, datacenters dc1 and dc2, joined over the WAN. Service `web`
has one instance in each: `a` in dc1 (an agent service with a TTL check), `b` in dc2, both on one port,
at 127.0.0.2 and 127.0.0.3 (`python3 -m http.server`, answering its own name), as the DNS anchor needs:
HAProxy takes an SRV lookup only for a name starting with `_`, and Consul answers a prepared query's
SRV records only at `<query>.query.consul`, so HAProxy resolves its A records with a fixed port.
Subjects, one at a time, each on its own frontend:
- basenode, through Consul: `--routes web:PORT/http;failover=dc2`; the event is a's deregistration from
  dc1 (failover), then its registration again (failback);
- basenode, HAProxy's own check: `;failover=dc2;check=tcp;check_interval=100ms` (and again with
  `;timeout_connect=100ms`); the event is a's process killed (Consul still says passing), then started
  again on its port;
- HAProxy DNS + a prepared query (the anchor: no basenode): a prepared query `web-failover` with
  `Failover: {Datacenters: [dc2]}` and `OnlyPassing`, resolved by HAProxy's `resolvers` at dc1's DNS port
  through `server-template web 4 web-failover.query.consul:PORT`, at a 100 ms and a 1 s resolve interval
  (`hold obsolete 0s`); the events are a's
  deregistration and registration, as for basenode through Consul.

Each time runs from just before the event to the first probe answered by the other datacenter's instance
(a fresh connection each, one every ~2 ms). A steady load through the same frontend (one keep-alive client
and one that connects per request, back to back) counts the requests failed over all the events.

Run alone: `.venv/bin/python bench/run.py --only failover --out docs/benchmarks.md`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from bench.common import (
    ConsulDev,
    Context,
    Processes,
    Section,
    Table,
    clean_env,
    fmt,
    free_port,
    http_get,
    pct,
    percentile,
    ratio,
)
from bench.discovery import DNS_CONFIG, basenode_env
from tests.support.backends import Load
from tests.support.waiting import eventually

TITLE = "Failover to another datacenter (issue 15)"
THROUGH_CONSUL = "basenode, through Consul"
WITH_CHECK = "basenode, HAProxy check (inter 100 ms)"
WITH_CHECK_FAST = "basenode, HAProxy check, timeout_connect 100 ms"
DNS_100MS = "HAProxy DNS + prepared query, resolve 100 ms"
DNS_1S = "HAProxy DNS + prepared query, resolve 1 s"
QUERY = "web-failover"
TIMEOUT = 30.0

DNS_ROUTE = """
frontend web
    bind 127.0.0.1:{port}
    default_backend web

backend web
    balance roundrobin
    server-template web 4 {query}.query.consul:{backend_port} resolvers consul resolve-prefer ipv4 \
init-addr none
"""


@dataclass
class Result:
    failover: List[float] = field(default_factory=list)  # ms
    failback: List[float] = field(default_factory=list)
    missed: int = 0
    requests: int = 0
    failed: int = 0


def until_answered_by(port: int, name: str, t0: float) -> Optional[float]:
    deadline = t0 + TIMEOUT
    while time.monotonic() < deadline:
        sent = time.monotonic()
        if http_get(port) == name:
            return (sent - t0) * 1000
        time.sleep(0.002)
    return None


class Instance:
    """A backend answering its name at HOST:port in its own process, so that it can be killed and
    started again."""

    def __init__(self, ctx: Context, procs: Processes, name: str, host: str, port: int) -> None:
        self.ctx, self.procs, self.name, self.host, self.port = ctx, procs, name, host, port
        self.root = ctx.scratch / f"www-{name}"
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "index.html").write_text(name)
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    def start(self) -> None:
        argv = [
            self.ctx.python,
            "-m",
            "http.server",
            str(self.port),
            "--bind",
            self.host,
            "--directory",
            str(self.root),
            "--protocol",  # keep-alive, and the status line http_get expects (Python >= 3.11)
            "HTTP/1.1",
        ]
        self.proc = self.procs.start(argv, env=clean_env(), log=self.ctx.scratch / f"backend-{self.name}.log")
        eventually(self._answers, 10, 0.01, f"backend {self.name}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.procs.stop(self.proc, grace=0)

    def register(self, agent: ConsulDev) -> None:
        agent.agent_register("web", f"web-{self.name}", self.port, address=self.host)


def measure(
    port: int, reps: int, fail: Callable[[], None], back: Callable[[], None], settle: Callable[[], None]
) -> Result:
    """`reps` failovers and failbacks through `port`, under load."""
    result = Result()
    with Load(port) as load:

        def timed(event: Callable[[], None], answerer: str, into: List[float]) -> None:
            t0 = time.monotonic()
            event()
            took = until_answered_by(port, answerer, t0)
            if took is None:
                result.missed += 1
            else:
                into.append(took)
            time.sleep(0.3)

        for _ in range(reps):
            settle()
            timed(fail, "b", result.failover)
            timed(back, "a", result.failback)
    result.requests, result.failed = load.ok + len(load.failures), len(load.failures)
    return result


def start_basenode(ctx: Context, procs: Processes, workdir: Path, consul: ConsulDev, spec: str) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        ctx.python, str(ctx.zipapp), "run", "--no-consul", "--state-dir", str(workdir / "state"),
        "--routes", spec, "--status-addr", f"127.0.0.1:{free_port()}", "--haproxy-log", "off",
    ]  # fmt: skip
    procs.start(argv, env=basenode_env(ctx, consul.http_addr), log=workdir / "basenode.log")


def start_dns(
    procs: Processes, workdir: Path, dc1: ConsulDev, port: int, backend_port: int, interval: str
) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "haproxy.cfg"
    route = DNS_ROUTE.format(port=port, query=QUERY, backend_port=backend_port)
    cfg.write_text(
        DNS_CONFIG.format(workdir=workdir, dns_port=dc1.ports["dns"], interval=interval, routes=route)
    )
    argv = ["haproxy", "-W", "-S", f"{workdir}/master.sock,mode,600", "-f", str(cfg)]
    procs.start(argv, env=clean_env(), log=workdir / "haproxy.log")


def run(ctx: Context) -> Section:
    if not shutil.which("haproxy"):
        raise RuntimeError("haproxy not found (make system-deps)")
    reps = ctx.reps(20, 2)
    results: Dict[str, Result] = {}
    with Processes() as procs:
        dc1 = ConsulDev(procs, ctx.scratch / "dc1")
        dc2 = ConsulDev(procs, ctx.scratch / "dc2", datacenter="dc2")
        dc1.agent.join_wan(dc2.agent)
        backend_port = free_port()
        a = Instance(ctx, procs, "a", "127.0.0.2", backend_port)
        b = Instance(ctx, procs, "b", "127.0.0.3", backend_port)
        b.register(dc2)
        a.register(dc1)
        dc1.request(
            "POST",
            "/v1/query",
            {
                "Name": QUERY,
                "Service": {"Service": "web", "OnlyPassing": True, "Failover": {"Datacenters": ["dc2"]}},
            },
        )

        def serving_a(port: int) -> Callable[[], None]:
            return lambda: eventually(lambda: http_get(port) == "a", TIMEOUT, 0.01, "a served")

        consul_fail = lambda: dc1.agent_deregister("web-a")  # noqa: E731
        consul_back = lambda: a.register(dc1)  # noqa: E731

        port = free_port()
        start_basenode(ctx, procs, ctx.scratch / "consul-path", dc1, f"web:{port}/http;failover=dc2")
        serving_a(port)()
        results[THROUGH_CONSUL] = measure(port, reps, consul_fail, consul_back, serving_a(port))

        for name, extra in ((WITH_CHECK, ""), (WITH_CHECK_FAST, ";timeout_connect=100ms")):
            port = free_port()
            spec = f"web:{port}/http;failover=dc2;check=tcp;check_interval=100ms{extra}"
            start_basenode(ctx, procs, ctx.scratch / f"check-path{len(extra)}", dc1, spec)
            serving_a(port)()
            results[name] = measure(port, reps, a.kill, a.start, serving_a(port))

        for name, interval in ((DNS_100MS, "100ms"), (DNS_1S, "1s")):
            port = free_port()
            start_dns(procs, ctx.scratch / f"dns-{interval}", dc1, port, backend_port, interval)
            serving_a(port)()
            results[name] = measure(port, reps, consul_fail, consul_back, serving_a(port))
    return Section(TITLE, (table(results, reps),), METHOD, summary(results))


def _markdown(text: str) -> str:
    """A docstring paragraph as Markdown: wrapped lines joined, `- ` items kept on lines of their own."""
    lines: List[str] = []
    for line in text.splitlines():
        if lines and not line.startswith("- "):
            lines[-1] += " " + line.strip()
        else:
            lines.append(line.strip())
    return "\n".join(lines)


METHOD = tuple(_markdown(p) for p in (__doc__ or "").split("\n\nRun alone")[0].split("\n\n")[1:])


def table(results: Dict[str, Result], reps: int) -> Table:
    base = percentile(results[THROUGH_CONSUL].failover, 50) if results[THROUGH_CONSUL].failover else 0.0
    rows: List[Tuple[str, ...]] = []
    for name, r in results.items():
        p50 = percentile(r.failover, 50) if r.failover else 0.0
        rows.append(
            (
                name, str(reps), pct(r.failover, 50), pct(r.failover, 90), fmt(max(r.failover, default=0.0)),
                pct(r.failback, 50), pct(r.failback, 90), str(r.missed), f"{r.requests:,}", str(r.failed),
                ratio(p50, base) if base else "-",
            )
        )  # fmt: skip
    notes = (
        "failover: the event (a deregistered, or killed) -> the first probe answered by b (dc2); failback: "
        "a registered (or started) again -> the first probe answered by a. missed: times past 30 s.",
        "With HAProxy's check, a's process is killed (SIGKILL) and failback includes starting a new one "
        "until its port answers. A probe that meets the dead a before the check marks it down is retried "
        "on b after HAProxy's turn-around delay of min(timeout connect, 1 s) (1 s with the default "
        "template's 2 s connect timeout): that delay, not the check's 3 x 100 ms, is most of its failover "
        "time; a route with `timeout_connect=100ms` shortens it.",
        "failed: requests of the steady load that got no 200 over all the events of the subject (the "
        "killed instance's in-flight requests and those sent to it before HAProxy's check marks it down "
        "count here).",
    )
    headers = (
        "subject", "events", "failover p50", "p90", "max", "failback p50", "p90", "missed", "requests",
        "failed", "failover p50 vs basenode",
    )  # fmt: skip
    return Table(
        "Failover and failback: local instance gone -> served by dc2 (ms)", headers, tuple(rows), notes
    )


def summary(results: Dict[str, Result]) -> Sequence[str]:
    lines = []
    for name, r in results.items():
        lines.append(
            f"{name}: failover p50 {pct(r.failover, 50)} ms, failback p50 {pct(r.failback, 50)} ms, "
            f"{r.failed} of {r.requests:,} requests failed"
        )
    return tuple(lines)
