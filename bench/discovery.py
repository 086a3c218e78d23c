"""Discovery figures of issue 3: how fast and how gently HAProxy follows the Consul catalog.

Three subjects, side by side in one run, against one `consul agent -dev` and the same backends:
- basenode: `basenode run --no-consul` (blocking queries, runtime-API apply);
- docker-basenode's way, reproduced by bench/poll_and_restart.py: a full read of the routes every 5 s,
  basenode's template rendered, HAProxy restarted (stop and start) for every change;
- HAProxy's native Consul DNS discovery: no basenode, a hand-written config with `resolvers` pointed at
  the agent's DNS port and `server-template` on the service's SRV name (ports from the catalog), at a
  1 s resolve interval (HAProxy's default) and at 100 ms.

Four tables: propagation latency (catalog change -> traffic follows), failed requests under steady load
during membership changes, requests sent to Consul at idle with 100 routes, and apply time and memory
with 1,000 services x 5 instances routed.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

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
    free_ports,
    http_get,
    pct,
    percentile,
    ratio,
)
from tests.support.waiting import eventually

TITLE = "Discovery: Consul catalog -> HAProxy (issue 3)"

BASENODE = "basenode"
POLLER = "poll 5 s + restart (docker-basenode)"
DNS_1S = "HAProxy DNS, resolve 1 s"
DNS_100MS = "HAProxy DNS, resolve 100 ms"
WRK = "/usr/bin/wrk"
MIB = 1024.0

# Backends, all in one process, shared by every subject: "base" is always routed; the others come and go.
NEW = ("n0", "n1", "n2", "n3")  # propagation: one of these is added, then removed
STEADY = ("p0", "p1")  # load: always passing
CHURN = ("d0", "d1", "d2")  # load: added, failed, passed, removed in turn
POOL = ("s0", "s1", "s2", "s3", "s4")  # scale: instance j of every service answers as s<j>
BACKEND_NAMES = ("base", *NEW, *STEADY, *CHURN, *POOL)

# The processes of a `basenode run`, by role.
PID1 = "basenode run (PID 1)"
SYNC = "basenode sync"
HAPROXY_MASTER = "haproxy master"
HAPROXY_WORKER = "haproxy worker"
CONSUL_AGENT = "consul agent"

APPLIED_RE = re.compile(r"applied by (\w+) in ([\d.]+) ms")


# --- subjects -----------------------------------------------------------------------------------


@dataclass
class Subject:
    """One running subject: its process, its log and the frontend port of each routed service."""

    name: str
    proc: subprocess.Popen
    log: Path
    ports: Dict[str, int]
    counter: Optional[object] = None  # the DnsCounter or HttpCounter in front of the agent, if any
    status_port: int = 0  # basenode's --status-addr port (0: not basenode)
    log_offset: int = 0
    pending: str = ""  # log text read but not yet consumed by _apply_lines

    def new_log(self) -> str:
        """Log text written since the last call."""
        with open(self.log, "rb") as f:
            f.seek(self.log_offset)
            data = f.read()
        self.log_offset += len(data)
        return data.decode(errors="replace")


def basenode_env(ctx: Context, consul_addr: str) -> Dict[str, str]:
    env = {k: v for k, v in clean_env().items() if not k.startswith(("BASENODE_", "CONSUL_"))}
    env.update(
        CONSUL_HTTP_ADDR=consul_addr,
        BASENODE_CONFIG=os.devnull,  # no config file from the machine
        SHIV_ROOT=str(ctx.scratch / "shiv"),
    )
    return env


def start_basenode(
    ctx: Context,
    procs: Processes,
    name: str,
    workdir: Path,
    consul_addr: str,
    ports: Mapping[str, int],
    flags: Sequence[str] = (),
    run_agent: bool = False,
) -> Subject:
    """`basenode run` routing `ports`; with `run_agent` it runs its own agent (its HTTP port from
    `consul_addr`, the rest from `flags`' config), else it uses the agent at `consul_addr`."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec = ",".join(f"{service}:{port}/http" for service, port in ports.items())
    status_port = free_port()
    argv = [
        ctx.python,
        str(ctx.zipapp),
        "run",
        *(() if run_agent else ("--no-consul",)),
        "--state-dir",
        str(workdir / "state"),
        "--routes",
        spec,
        "--status-addr",
        f"127.0.0.1:{status_port}",
        # No access log: the HAProxy DNS subject logs none either, and under wrk a line per request
        # through PID 1 would be measured as part of basenode's cost.
        "--haproxy-log",
        "off",
        *flags,
    ]
    log = workdir / "basenode.log"
    proc = procs.start(argv, env=basenode_env(ctx, consul_addr), log=log)
    return Subject(name, proc, log, dict(ports), status_port=status_port)


def start_poller(
    ctx: Context, procs: Processes, name: str, workdir: Path, consul_addr: str, ports: Mapping[str, int]
) -> Subject:
    """docker-basenode's way (bench/poll_and_restart.py) routing `ports`, reading the agent at
    `consul_addr`. It runs basenode's code from this checkout, so on the harness's own interpreter
    (which has basenode's packages), not on the zipapp's."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec = ",".join(f"{service}:{port}/http" for service, port in ports.items())
    argv = [sys.executable, str(common.ROOT / "bench" / "poll_and_restart.py"), "--interval", "5"]
    argv += ["--state-dir", str(workdir / "state"), "--routes", spec]
    log = workdir / "poller.log"
    proc = procs.start(argv, env=basenode_env(ctx, consul_addr), log=log)
    return Subject(name, proc, log, dict(ports))


DNS_CONFIG = """\
global
    stats socket {workdir}/stats.sock mode 600 level admin
    log stdout format raw local0 notice

defaults
    log global
    mode http
    timeout connect 2s
    timeout client 1m
    timeout server 1m
    retries 3
    option redispatch 1

resolvers consul
    nameserver consul 127.0.0.1:{dns_port}
    accepted_payload_size 8192
    resolve_retries 3
    timeout resolve {interval}
    timeout retry {interval}
    hold valid 10s
    hold obsolete 0s
{routes}"""

DNS_ROUTE = """
frontend {service}
    bind 127.0.0.1:{port}
    default_backend {service}

backend {service}
    balance roundrobin
    server-template {service} 10 _{service}._tcp.service.consul resolvers consul resolve-prefer ipv4 \
init-addr none check
"""


def start_dns(
    procs: Processes, name: str, workdir: Path, agent: ConsulDev, ports: Mapping[str, int], interval: str
) -> Subject:
    """HAProxy alone, resolving each service's SRV records at the agent (through a query counter)."""
    workdir.mkdir(parents=True, exist_ok=True)
    counter = DnsCounter(agent.ports["dns"])
    routes = "".join(DNS_ROUTE.format(service=s, port=p) for s, p in ports.items())
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(
        DNS_CONFIG.format(workdir=workdir, dns_port=counter.port, interval=interval, routes=routes)
    )
    log = workdir / "haproxy.log"
    argv = ["haproxy", "-W", "-S", f"{workdir}/master.sock,mode,600", "-f", str(cfg)]
    proc = procs.start(argv, env=clean_env(), log=log)
    return Subject(name, proc, log, dict(ports), counter)


def stop_subject(procs: Processes, subject: Subject) -> None:
    procs.stop(subject.proc)
    if subject.counter is not None:
        subject.counter.close()  # type: ignore[attr-defined]


def wait_serving(subject: Subject, service: str, expected: str, timeout: float = 60.0) -> None:
    port = subject.ports[service]

    def probe() -> bool:
        if subject.proc.poll() is not None:
            raise RuntimeError(f"{subject.name} exited with {subject.proc.returncode}; see {subject.log}")
        return http_get(port) == expected

    eventually(probe, timeout, 0.02, f"{subject.name}: {service} on {port} answering {expected}")


# --- counters in front of the agent -------------------------------------------------------------


class DnsCounter:
    """A UDP relay in front of the agent's DNS port that counts the queries passing through."""

    def __init__(self, upstream_port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.up.connect(("127.0.0.1", upstream_port))
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, name="dns-counter", daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        pending: Dict[bytes, tuple] = {}  # DNS id -> client address
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock, self.up], [], [], 0.2)
            try:
                if self.sock in ready:
                    data, addr = self.sock.recvfrom(65535)
                    self.queries += 1
                    pending[data[:2]] = addr
                    self.up.send(data)
                if self.up in ready:
                    data = self.up.recv(65535)
                    addr = pending.pop(data[:2], None)
                    if addr is not None:
                        self.sock.sendto(data, addr)
            except OSError:
                continue

    def count(self) -> int:
        return self.queries

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()
        self.up.close()


class _ProxyHandler(BaseHTTPRequestHandler):
    """Forwards each request to the agent on a connection of its own (one per client connection)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    upstream: Optional[http.client.HTTPConnection] = None
    hop: ClassVar[FrozenSet[str]] = frozenset(
        {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}
    )

    def _forward(self) -> None:
        server: HttpCounter = self.server  # type: ignore[assignment]
        server.add(self.command, self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in self.hop}
        if self.upstream is None:
            # a blocking query is held up to wait + wait/16 (5 min by default)
            self.upstream = http.client.HTTPConnection("127.0.0.1", server.upstream_port, timeout=400)
        try:
            self.upstream.request(self.command, self.path, body=body, headers=headers)
            resp = self.upstream.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            self.upstream.close()
            self.upstream = None
            self.close_connection = True
            return
        self.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in self.hop:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:  # the client went away (a subject being stopped): nothing to tell it
            self.close_connection = True

    do_GET = do_PUT = do_POST = do_DELETE = _forward

    def log_message(self, format: str, *args: object) -> None:
        pass


class HttpCounter(ThreadingHTTPServer):
    """A loopback HTTP proxy in front of the agent that counts requests, by method and path."""

    daemon_threads = True

    def __init__(self, upstream_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream_port = upstream_port
        self.port = self.server_address[1]
        self.lock = threading.Lock()
        self.paths: Dict[str, int] = {}
        self._thread = threading.Thread(target=self.serve_forever, args=(0.1,), daemon=True)
        self._thread.start()

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that closes its connection mid-answer is no news here

    def add(self, method: str, path: str) -> None:
        with self.lock:
            path = path.split("?")[0]
            if path.startswith("/v1/health/service/"):
                path = "/v1/health/service/NAME"  # one line for the per-route reads
            key = f"{method} {path}"
            self.paths[key] = self.paths.get(key, 0) + 1

    def count(self) -> int:
        with self.lock:
            return sum(self.paths.values())

    def close(self) -> None:
        self.shutdown()
        self.server_close()


# --- figure 1: propagation ----------------------------------------------------------------------


@dataclass
class Propagation:
    adds: List[float] = field(default_factory=list)  # seconds, change -> traffic follows
    removes: List[float] = field(default_factory=list)
    missed: int = 0  # changes not followed within the timeout
    writes: List[float] = field(default_factory=list)  # the catalog write itself

    @property
    def all(self) -> List[float]:
        return self.adds + self.removes


PROBE_PAUSE = 0.002


def until_answers(port: int, name: str, t0: float, timeout: float) -> Optional[float]:
    """Probe on fresh connections until `name` answers; its probe's send time - t0, None on timeout."""
    while True:
        sent = time.monotonic()
        if http_get(port) == name:
            return sent - t0
        if sent - t0 > timeout:
            return None
        time.sleep(PROBE_PAUSE)


def until_gone(port: int, name: str, t0: float, timeout: float, misses: int) -> Optional[float]:
    """Probe until `misses` probes in a row were not answered by `name`; the send time of the first of
    them - t0 (it is gone from then on), None on timeout."""
    first_miss: Optional[float] = None
    run = 0
    while run < misses:
        sent = time.monotonic()
        if http_get(port) == name:
            first_miss, run = None, 0
        else:
            first_miss = sent if first_miss is None else first_miss
            run += 1
        if sent - t0 > timeout:
            return None
        time.sleep(PROBE_PAUSE)
    return first_miss - t0 if first_miss is not None else None


def measure_propagation(
    agent: ConsulDev,
    port: int,
    service: str,
    backends: Mapping[str, int],
    changes: int,
    gap: Tuple[float, float],
    timeout: float,
    rng: random.Random,
    servers: int = 2,
    node: str = "ext-prop",
) -> Propagation:
    """`changes` catalog writes on `service`, alternately registering one of NEW and deregistering it."""
    result = Propagation()
    for i in range(changes):
        time.sleep(rng.uniform(*gap))  # a random phase against any poll or resolve interval
        name = NEW[(i // 2) % len(NEW)]
        service_id = f"{service}-{name}"
        t0 = time.monotonic()
        if i % 2 == 0:
            agent.catalog_register(node, service, service_id, backends[name])
            result.writes.append(time.monotonic() - t0)
            took = until_answers(port, name, t0, timeout)
            if took is not None:
                result.adds.append(took)
        else:
            agent.catalog_deregister(node, service_id)
            result.writes.append(time.monotonic() - t0)
            took = until_gone(port, name, t0, timeout, misses=3 * servers)
            if took is not None:
                result.removes.append(took)
        result.missed += took is None
    return result


def propagation_phase(
    ctx: Context, procs: Processes, agent: ConsulDev, backends: Mapping[str, int]
) -> Tuple[Table, Dict[str, Propagation], Dict[str, common.Memory]]:
    rng = random.Random()  # a fresh phase against the poll and resolve intervals in every run
    plans = (  # subject, changes, gap between changes (s), timeout per change (s)
        (BASENODE, ctx.reps(200, 20), (0.06, 0.2), 5.0),
        (POLLER, ctx.reps(12, 2), (0.0, 5.0), 15.0),
        (DNS_1S, ctx.reps(24, 4), (0.0, 1.0), 5.0),
        (DNS_100MS, ctx.reps(40, 4), (0.0, 0.2), 5.0),
    )
    results: Dict[str, Propagation] = {}
    memory: Dict[str, common.Memory] = {}
    queries: Dict[str, float] = {}
    for i, (name, changes, gap, timeout) in enumerate(plans):
        service = f"prop{i}"
        agent.catalog_register("ext-prop", service, f"{service}-base", backends["base"])
        subject = start_subject(ctx, procs, name, ctx.scratch / f"prop{i}", agent, {service: free_port()})
        try:
            wait_serving(subject, service, "base")
            q0, t0 = _count(subject), time.monotonic()
            results[name] = measure_propagation(
                agent, subject.ports[service], service, backends, changes, gap, timeout, rng
            )
            if subject.counter is not None:
                queries[name] = (_count(subject) - q0) / (time.monotonic() - t0)
            if name == BASENODE:
                memory = process_memory(procs, subject)
        finally:
            stop_subject(procs, subject)
        print(f"  propagation {name}: {len(results[name].all)} changes", flush=True)

    ref = percentile(results[BASENODE].all, 50)
    rows = []
    for name, _, _, _ in plans:
        r = results[name]
        everything = [x * 1000 for x in r.all]
        rows.append(
            (
                name,
                str(len(everything)) + (f" ({r.missed} missed)" if r.missed else ""),
                pct(everything, 50),
                pct(everything, 90),
                pct(everything, 99, min_samples=100),
                fmt(max(everything) if everything else float("nan")),
                fmt(sum(everything) / len(everything) if everything else float("nan")),
                pct([x * 1000 for x in r.adds], 50),
                pct([x * 1000 for x in r.removes], 50),
                ratio(percentile(r.all, 50), ref),
            )
        )
    writes = [x * 1000 for r in results.values() for x in r.writes]
    notes = [
        "Each change is one catalog write (`/v1/catalog/register` or `/deregister` of an instance on "
        "an external node, no check, so passing at once), made at a random moment; the clock starts "
        f"just before the write (the write itself: p50 {pct(writes, 50, 2)} ms). The service always has "
        "a `base` instance; the change adds a second instance (answering with another name) or removes "
        "it. Probes go through the subject's HAProxy frontend, a fresh connection each, one every "
        f"~{PROBE_PAUSE * 1000:.0f} ms plus the request's own time (about 1 ms); latency is the send "
        "time of the first probe answered by the new instance (add), or of the first of "
        "6 probes in a row not answered by the removed one (remove). Round robin over 2 servers: a "
        "probe reaches the new instance within 2 probes.",
        "p99 is shown only with 100 or more changes. Changes per subject: the poller needs about 5 s "
        "per change (2.5 s mean by construction plus a random gap), the DNS subjects about their "
        "resolve interval, so they get fewer changes to keep the run short.",
    ]
    for name, per_second in queries.items():
        notes.append(
            f"{name}: {per_second:.1f} DNS queries per second to the agent for this one service "
            f"({per_second * 60:.0f} per minute), idle or not."
        )
    table = Table(
        "Propagation: catalog change -> traffic follows (ms)",
        (
            "subject",
            "changes",
            "p50",
            "p90",
            "p99",
            "max",
            "mean",
            "add p50",
            "remove p50",
            "p50 vs basenode",
        ),
        tuple(rows),
        tuple(notes),
    )
    return table, results, memory


def _count(subject: Subject) -> int:
    return subject.counter.count() if subject.counter is not None else 0  # type: ignore[attr-defined]


def start_subject(
    ctx: Context,
    procs: Processes,
    name: str,
    workdir: Path,
    agent: ConsulDev,
    ports: Mapping[str, int],
    consul_addr: Optional[str] = None,
) -> Subject:
    if name == BASENODE:
        return start_basenode(ctx, procs, name, workdir, consul_addr or agent.http_addr, ports)
    if name == POLLER:
        return start_poller(ctx, procs, name, workdir, consul_addr or agent.http_addr, ports)
    interval = {DNS_1S: "1s", DNS_100MS: "100ms"}[name]
    return start_dns(procs, name, workdir, agent, ports, interval)


# --- figure 2: failed requests under load -------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    requests: int
    non_2xx: int
    socket_errors: Dict[str, int]
    seconds: float

    @property
    def failed(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


def parse_wrk(text: str) -> WrkResult:
    requests = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    if requests is None:
        raise RuntimeError(f"wrk printed no summary:\n{text}")
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0}.get(requests.group(3), 1.0)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    kinds = ("connect", "read", "write", "timeout")
    socket_errors = dict(zip(kinds, map(int, errors.groups()))) if errors else dict.fromkeys(kinds, 0)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        int(requests.group(1)),
        int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors,
        float(requests.group(2)) * unit,
    )


CHURN_STEPS = ("add", "fail", "pass", "remove")  # each one changes the servers HAProxy routes to


def churn_step(agent: common.ConsulClient, service: str, name: str, port: int, step: int) -> str:
    """Step `step` of an instance's cycle: register it (agent service, TTL check passing), fail its
    check, pass it, deregister it."""
    service_id = f"{service}-{name}"
    if step == 0:
        agent.agent_register(service, service_id, port)
    elif step in (1, 2):
        agent.set_check(service_id, passing=step == 2)
    else:
        agent.agent_deregister(service_id)
    return CHURN_STEPS[step]


def churn(agent: ConsulDev, service: str, backends: Mapping[str, int], i: int) -> str:
    """Change number i: the churn instances take turns, each through a whole cycle."""
    name = CHURN[(i // 4) % len(CHURN)]
    return churn_step(agent, service, name, backends[name], i % 4)


def load_phase(
    ctx: Context,
    procs: Processes,
    agent: ConsulDev,
    backends: Mapping[str, int],
    subjects: Sequence[str] = (BASENODE, POLLER, DNS_1S),
) -> Tuple[Table, Dict[str, Tuple[int, WrkResult, int]]]:
    plans = tuple(  # subject, changes, seconds between changes, seconds after the last change
        plan
        for plan in (
            (BASENODE, ctx.reps(200, 20), 0.1, 2.0),
            (POLLER, ctx.reps(8, 2), 6.0, 7.0),
            (DNS_1S, ctx.reps(200, 20), 0.1, 2.0),
        )
        if plan[0] in subjects
    )
    results: Dict[str, Tuple[int, WrkResult, int]] = {}
    for i, (name, changes, spacing, tail) in enumerate(plans):
        service = f"load{i}"
        for steady in STEADY:
            agent.agent_register(service, f"{service}-{steady}", backends[steady])
        subject = start_subject(ctx, procs, name, ctx.scratch / f"load{i}", agent, {service: free_port()})
        try:
            port = subject.ports[service]
            eventually(
                lambda port=port: {http_get(port) for _ in range(4)} == set(STEADY),
                60,
                0.05,
                f"{name}: {service} served by {STEADY}",
            )
            subject.new_log()
            warmup = 1.0
            duration = warmup + changes * spacing + tail
            out = ctx.scratch / f"wrk-{i}.txt"
            url = f"http://127.0.0.1:{subject.ports[service]}/"
            wrk = procs.start(
                [WRK, "-t", "2", "-c", "20", "-d", f"{duration:.0f}s", "--timeout", "5s", url], log=out
            )
            start = time.monotonic() + warmup
            for n in range(changes):
                pause = start + n * spacing - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                churn(agent, service, backends, n)
            wrk.wait(timeout=duration + 30)
            result = parse_wrk(out.read_text())
            applies = len(APPLIED_RE.findall(subject.new_log())) if subject.counter is None else -1
            results[name] = (changes, result, applies)
        finally:
            stop_subject(procs, subject)
            for n in range(len(CHURN)):
                agent.agent_deregister(f"{service}-{CHURN[n]}")
        print(f"  load {name}: {results[name][1].failed} failed", flush=True)

    rows = []
    for name, (changes, r, applies) in results.items():
        errors = ", ".join(f"{k} {v}" for k, v in r.socket_errors.items() if v) or "0"
        rows.append(
            (
                name,
                str(changes),
                "-" if applies < 0 else str(applies),
                f"{r.requests:,}",
                f"{r.requests / r.seconds:,.0f}",
                str(r.non_2xx),
                errors,
                str(r.failed),
                fmt(r.failed / max(applies if applies > 0 else changes, 1), 1),
            )
        )
    notes = (
        "Load: `wrk -t 2 -c 20 --timeout 5s` (20 keep-alive connections on loopback) through the "
        "subject's frontend, from 1 s before the first change until a few seconds after the last. The "
        "service keeps 2 instances passing throughout; the changes cycle through 3 more instances: "
        "register (agent service with a TTL check, passing), fail the check, pass it, deregister. The "
        "backends stay up, so a failure is the apply's doing, not a dead server's.",
        "; ".join(
            f"{name}: {changes} changes, one every {spacing:g} s" for name, changes, spacing, _ in plans
        )
        + (
            ". The poller's changes are 6 s apart so that each lands in a 5 s poll of its own and causes "
            "one HAProxy restart; a 1 s resolver sees about every tenth state of the 100 ms stream"
            if POLLER in subjects
            else ""
        )
        + ". Failed per apply = failed / applies (for HAProxy DNS: / changes). wrk reconnects at once "
        "after an error, so while a port is closed (the poller's restart) it counts thousands of "
        "connect/write errors: read those as downtime; read errors are requests cut in flight.",
        "applies: `haproxy: applied by` lines in basenode's log during the window (runtime API applies for "
        "basenode, HAProxy restarts for the poller); not known for HAProxy DNS, which resolves "
        "in place with no reload.",
    )
    table = Table(
        "Failed requests under steady load during membership changes",
        (
            "subject",
            "changes",
            "applies",
            "requests",
            "req/s",
            "non-2xx",
            "socket errors",
            "failed",
            "failed per apply",
        ),
        tuple(rows),
        notes,
    )
    return table, results


# --- figure 3: requests to Consul at idle -------------------------------------------------------


def idle_phase(
    ctx: Context, procs: Processes, backends: Mapping[str, int], routes: int, window: float
) -> Tuple[Table, Dict[str, float]]:
    agent = ConsulDev(procs, ctx.scratch / "consul-idle")
    counts: Dict[str, int] = {}
    seconds: Dict[str, float] = {}
    paths: Dict[str, Dict[str, int]] = {}
    try:
        services = [f"idle{n:03d}" for n in range(routes)]
        for service in services:
            agent.catalog_register("ext-idle", service, f"{service}-base", backends["base"])
        # Two groups, one after the other: the DNS relay's thousand queries a second would slow the
        # HTTP proxy in this same process, and with it the poller's rounds.
        groups = ((BASENODE, POLLER), window), ((DNS_1S, DNS_100MS), min(window, 15.0))
        for names, length in groups:
            subjects: List[Subject] = []
            try:
                for name in names:
                    ports = dict(zip(services, free_ports(routes)))
                    workdir = ctx.scratch / f"idle-{len(counts) + len(subjects)}"
                    if name in (BASENODE, POLLER):
                        proxy = HttpCounter(agent.ports["http"])
                        addr = f"127.0.0.1:{proxy.port}"
                        subject = start_subject(ctx, procs, name, workdir, agent, ports, addr)
                        subject.counter = proxy
                    else:
                        subject = start_subject(ctx, procs, name, workdir, agent, ports)
                    subjects.append(subject)
                for subject in subjects:
                    for service in (services[0], services[-1]):
                        wait_serving(subject, service, "base")
                time.sleep(5.0)  # past start-up: basenode's first reads and its safety-net dump
                before = {s.name: _count(s) for s in subjects}
                http_subjects = (s for s in subjects if s.name in (BASENODE, POLLER))
                before_paths = {s.name: dict(s.counter.paths) for s in http_subjects}
                t0 = time.monotonic()
                time.sleep(length)
                elapsed = time.monotonic() - t0
                for s in subjects:
                    counts[s.name] = _count(s) - before[s.name]
                    seconds[s.name] = elapsed
                    if isinstance(s.counter, HttpCounter):
                        old = before_paths[s.name]
                        paths[s.name] = {
                            k: v - old.get(k, 0) for k, v in s.counter.paths.items() if v > old.get(k, 0)
                        }
            finally:
                for subject in reversed(subjects):
                    stop_subject(procs, subject)
    finally:
        agent.close()
        procs.stop(agent.proc)

    per_minute = {name: count * 60.0 / seconds[name] for name, count in counts.items()}
    rows = []
    for name, value in per_minute.items():
        rows.append(
            (
                name,
                "DNS (UDP)" if name in (DNS_1S, DNS_100MS) else "HTTP",
                f"{counts[name]:,} in {seconds[name]:.0f} s",
                fmt(value, 1),
                fmt(value / routes, 2),
            )
        )
    poller_paths = ", ".join(
        f"`{k}` {v}" for k, v in sorted(paths.get(POLLER, {}).items(), key=lambda kv: -kv[1])
    )
    notes = (
        f"{routes} services (one passing instance each) and {routes} routes, on an agent of their own. "
        "basenode and the poller run at the same time, each talking to the agent through its own "
        "counting HTTP proxy on loopback (CONSUL_HTTP_ADDR points at it); then both HAProxy DNS "
        "subjects at the same time, each through its own counting UDP relay in front of the agent's "
        "DNS port. The window opens 5 s after every subject of the group served its first and last "
        "route.",
        "basenode holds two blocking queries (catalog and KV routes, `wait` 5 min); a query already "
        "held when the window opened is not counted, so its idle rate is at most 2 per 5 min whatever "
        "the number of routes. The poller reads KV and then each route's health, and sleeps 5 s "
        "between rounds" + (f" (in the window: {poller_paths})." if poller_paths else "."),
        f"Target (issue 3): at most one per route per 5 min, i.e. <= {routes / 5:.0f} per minute for "
        f"{routes} routes.",
    )
    table = Table(
        f"Requests to Consul at idle, {routes} routes",
        ("subject", "protocol", "requests counted", "per minute", "per route per minute"),
        tuple(rows),
        notes,
    )
    return table, per_minute


# --- figure 4: scale ----------------------------------------------------------------------------


def register_bulk(agent: ConsulDev, services: Sequence[str], backends: Mapping[str, int]) -> None:
    """Instance j of every service on node ext-j, answering as POOL[j]; 64 operations per transaction
    (Consul's limit)."""
    ops: List[dict] = [
        {"Node": {"Verb": "set", "Node": {"Node": f"ext-{j}", "Address": "127.0.0.1"}}}
        for j in range(len(POOL))
    ]
    for service in services:
        for j, name in enumerate(POOL):
            instance = {"ID": f"{service}-{j}", "Service": service, "Address": "127.0.0.1"}
            instance["Port"] = backends[name]
            ops.append({"Service": {"Verb": "set", "Node": f"ext-{j}", "Service": instance}})
    for start in range(0, len(ops), 64):
        agent.request("PUT", "/v1/txn", ops[start : start + 64])


def scale_phase(
    ctx: Context, procs: Processes, backends: Mapping[str, int], routes: int, changes: int
) -> Tuple[Table, Dict[str, List[float]], Dict[str, common.Memory], str]:
    agent = ConsulDev(procs, ctx.scratch / "consul-scale")
    rng = random.Random()
    applied: List[float] = []
    others: List[str] = []  # applies that were not runtime-API ones (reloads)
    end_to_end: List[float] = []
    missed = 0
    try:
        services = [f"svc{n:04d}" for n in range(routes)]
        t0 = time.monotonic()
        register_bulk(agent, services, backends)
        registered = time.monotonic() - t0
        ports = dict(zip(services, free_ports(routes)))
        t0 = time.monotonic()
        subject = start_basenode(ctx, procs, BASENODE, ctx.scratch / "scale", agent.http_addr, ports)
        try:
            for service in (services[0], services[-1]):
                eventually(
                    lambda s=service: http_get(ports[s]) in POOL, 120, 0.05, f"route {service} at scale"
                )
            started = time.monotonic() - t0
            time.sleep(2.0)
            fresh = process_memory(procs, subject)  # before any change: what start-up alone costs
            subject.new_log()
            target = services[len(services) // 2]
            port = ports[target]
            for i in range(changes):
                time.sleep(rng.uniform(0.1, 0.3))
                name = NEW[(i // 2) % len(NEW)]
                service_id = f"{target}-{name}"
                t = time.monotonic()
                if i % 2 == 0:
                    agent.catalog_register("ext-0", target, service_id, backends[name])
                    took = until_answers(port, name, t, 10.0)
                else:
                    agent.catalog_deregister("ext-0", service_id)
                    took = until_gone(port, name, t, 10.0, misses=3 * (len(POOL) + 1))
                if took is None:
                    missed += 1
                    continue
                end_to_end.append(took * 1000)
                lines = eventually(lambda: _apply_lines(subject), 5, 0.01, "basenode's `applied by` log line")
                applied += [ms for how, ms in lines if how == "runtime"]
                others += [how for how, _ in lines if how != "runtime"]
            memory = process_memory(procs, subject)
            check = time_check(ctx.scratch / "scale" / "state" / "haproxy.cfg")
            summary_ms, summary_kb = time_summaries(agent)
        finally:
            stop_subject(procs, subject)
    finally:
        agent.close()
        procs.stop(agent.proc)

    rows = [
        ("haproxy: applied by runtime (log)", applied),
        ("end to end: change -> traffic follows", end_to_end),
    ]
    table = Table(
        f"Scale: {routes:,} services x {len(POOL)} instances routed, change -> applied (ms)",
        ("measure", "changes", "p50", "p90", "max"),
        tuple(
            (label, str(len(values)), pct(values, 50), pct(values, 90), fmt(max(values) if values else 0))
            for label, values in rows
        ),
        (
            f"{routes:,} services, {routes * len(POOL):,} instances registered in {registered:.1f} s "
            f"(catalog transactions), {routes:,} HTTP routes; basenode served the first and last route "
            f"{started:.1f} s after it started.",
            f"{changes} changes on one route, alternately registering a 6th instance and deregistering "
            "it, at random moments 0.1-0.3 s apart; the log lines are basenode's own timings "
            "(`haproxy: applied by runtime in X ms` is the whole apply: candidate written, runtime API, "
            "verify, file promoted; no `haproxy -c`). End to end as in the propagation table, with 6 "
            "servers in round robin (a probe reaches the new one within 6 probes)"
            + (f"; {missed} changes not followed within 10 s" if missed else "")
            + (f"; applies other than runtime: {', '.join(others)}." if others else "."),
            "Where the time goes, measured beside it: `haproxy -c` of the rendered "
            f"{routes:,}-route config alone takes p50 {fmt(check)} ms (what a route change pays before "
            "its reload; an instance change runs none); the "
            f"read basenode makes on every catalog wake (`/v1/internal/ui/services`, {summary_kb:,} kB "
            f"at this scale) p50 {fmt(summary_ms)} ms from this process.",
        ),
    )
    growth = ""
    if SYNC in fresh and SYNC in memory:
        growth = (
            f"The sync process at {routes:,} routes held {fresh[SYNC].rss_kb / MIB:.1f} MiB "
            f"RSS 2 s after start-up, before any change, and {memory[SYNC].rss_kb / MIB:.1f} "
            f"MiB after the {changes} changes."
        )
    return table, {"applied": applied, "e2e": end_to_end}, memory, growth


def time_check(cfg: Path, runs: int = 5) -> float:
    """p50 ms of `haproxy -c` on `cfg`: what a route change's apply pays before its reload, growing with
    the number of routes (an instance change runs none)."""
    took = []
    for _ in range(runs):
        t0 = time.monotonic()
        subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg)], check=False, stdout=subprocess.DEVNULL)
        took.append((time.monotonic() - t0) * 1000)
    return percentile(took, 50)


def time_summaries(agent: ConsulDev, runs: int = 5) -> Tuple[float, int]:
    """p50 ms and kB of the per-service summaries read (JSON decoded, as basenode does)."""
    took, size = [], 0
    for _ in range(runs):
        t0 = time.monotonic()
        size = len(json.dumps(agent.request("GET", "/v1/internal/ui/services")))
        took.append((time.monotonic() - t0) * 1000)
    return percentile(took, 50), size // 1024


def _apply_lines(subject: Subject) -> Optional[List[Tuple[str, float]]]:
    """The `applied by HOW in X ms` lines logged since the last call, once there is one."""
    subject.pending += subject.new_log()
    found = [(how, float(ms)) for how, ms in APPLIED_RE.findall(subject.pending)]
    if found:
        subject.pending = ""
    return found or None


def basenode_processes(procs: Processes, subject: Subject) -> Dict[str, int]:
    """{role: pid} of basenode PID 1 (the `run` process), its sync child, HAProxy and its Consul
    agent (when it runs one). A process that is exiting (a zombie) plays no role."""
    found = {PID1: subject.proc.pid}
    haproxies = []
    for pid in procs.remember_descendants(subject.proc):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name = common.comm(pid)
        if common.proc_state(pid) in ("Z", ""):
            continue
        if _ppid(pid) != subject.proc.pid:
            if name == "haproxy":
                haproxies.append(pid)  # a worker, an old worker finishing, or the sync loop's `haproxy -c`
        elif b"sync" in argv:
            found[SYNC] = pid
        elif name == "haproxy":
            found[HAPROXY_MASTER] = pid
        elif name == "consul":
            found[CONSUL_AGENT] = pid
    # The newest child of the master is its current worker (an old one lingers a while after a reload).
    workers = [pid for pid in haproxies if _ppid(pid) == found.get(HAPROXY_MASTER)]
    if workers:
        found[HAPROXY_WORKER] = max(workers, key=lambda pid: int(common.start_time(pid) or 0))
    return found


def process_memory(procs: Processes, subject: Subject) -> Dict[str, common.Memory]:
    """Resident memory of basenode PID 1 (the `run` process), its sync child and HAProxy."""
    return {
        role: common.memory_of(pid)
        for role, pid in basenode_processes(procs, subject).items()
        if role != CONSUL_AGENT
    }


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def memory_table(
    scale: Dict[str, common.Memory],
    routes: int,
    small: Optional[Dict[str, common.Memory]] = None,
    growth: str = "",
) -> Table:
    def mib(value: Optional[int]) -> str:
        return "-" if value is None else f"{value / MIB:.1f}"

    rows = []
    for process in (PID1, SYNC, HAPROXY_MASTER, HAPROXY_WORKER):
        row = [process]
        for readings in (small, scale) if small is not None else (scale,):
            m = readings.get(process)
            row += [mib(m.rss_kb), mib(m.pss_kb), mib(m.uss_kb)] if m else ["-", "-", "-"]
        rows.append(tuple(row))
    headers = ["process"]
    if small is not None:
        headers += ["1 route RSS", "PSS", "USS"]
    headers += [f"{routes:,} routes RSS", "PSS", "USS"]
    return Table(
        "Resident memory (MiB)",
        tuple(headers),
        tuple(rows),
        (
            "Read from /proc after the changes: RSS (VmRSS), PSS and USS (private pages) from "
            "smaps_rollup. 1 route: basenode of the propagation table; "
            f"{routes:,} routes: {routes:,} services x {len(POOL)} instances.",
            *((growth,) if growth else ()),
        ),
    )


# --- the family ---------------------------------------------------------------------------------


def run(ctx: Context) -> Section:
    for tool in ("haproxy", WRK):
        if not shutil.which(tool):
            raise RuntimeError(f"{tool} not found (make system-deps)")
    tables: List[Table] = []
    with Processes() as procs:
        backends = common.start_backends(procs, BACKEND_NAMES, ctx.python, ctx.scratch / "backends.log")
        agent = ConsulDev(procs, ctx.scratch / "consul")
        try:
            t = time.monotonic()
            prop_table, prop, small_memory = propagation_phase(ctx, procs, agent, backends)
            print(f"(propagation: {time.monotonic() - t:.0f} s)", flush=True)
            t = time.monotonic()
            load_table, load = load_phase(ctx, procs, agent, backends)
            print(f"(load: {time.monotonic() - t:.0f} s)", flush=True)
        finally:
            agent.close()
            procs.stop(agent.proc)
        t = time.monotonic()
        idle_routes = 100
        idle_table, idle = idle_phase(ctx, procs, backends, idle_routes, ctx.reps(60.0, 10.0))
        print(f"(idle: {time.monotonic() - t:.0f} s)", flush=True)
        t = time.monotonic()
        scale_routes = ctx.reps(1000, 100)
        scale_table, scale, scale_memory, growth = scale_phase(
            ctx, procs, backends, scale_routes, ctx.reps(20, 6)
        )
        print(f"(scale: {time.monotonic() - t:.0f} s)", flush=True)
        leftovers = procs.leftovers()
    if leftovers:
        print(f"discovery: processes left behind: {leftovers}", flush=True)

    tables = [
        prop_table,
        load_table,
        idle_table,
        scale_table,
        memory_table(scale_memory, scale_routes, small_memory, growth),
    ]
    summary = targets(prop, load, idle, idle_routes, scale, scale_memory, scale_routes)
    method = (
        "One `consul agent -dev` (Consul 1.8.7, every port on loopback) and one process of HTTP "
        "backends that answer with their own name serve all subjects; each subject runs alone, one "
        "after the other (except the idle count, on a second agent, where basenode and the poller run "
        "at the same time, then both HAProxy DNS subjects; and the scale run, on a third agent). "
        "basenode runs as "
        f"`{ctx.python} dist/basenode run --no-consul --routes SERVICE:PORT/http` with "
        "CONSUL_HTTP_ADDR pointing at the agent; the poller is `bench/poll_and_restart.py --interval 5` "
        "on the harness's interpreter, basenode's code from this checkout: every 5 s it reads the KV "
        "routes and each route's health (basenode's one-shot read), renders basenode's template and, "
        "when the text changed, runs `haproxy -c`, stops HAProxy (SIGTERM to the master) and starts it "
        "again, as docker-basenode's pyconfd had HAProxy restarted; "
        "HAProxy DNS is `haproxy -W -S SOCKET -f CFG` with `resolvers consul` (nameserver: the "
        "agent's DNS port, `hold obsolete 0s`, `timeout resolve` and `timeout retry` = the interval) "
        "and `server-template NAME 10 _NAME._tcp.service.consul resolvers consul resolve-prefer ipv4 "
        "init-addr none check` (SRV: ports from the catalog).",
    )
    return Section(TITLE, tuple(tables), method, summary)


def targets(
    prop: Mapping[str, Propagation],
    load: Mapping[str, Tuple[int, WrkResult, int]],
    idle: Mapping[str, float],
    idle_routes: int,
    scale: Mapping[str, List[float]],
    memory: Mapping[str, common.Memory],
    scale_routes: int,
) -> Tuple[str, ...]:
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lat = [x * 1000 for x in prop[BASENODE].all]
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    changes, wrk, _ = load[BASENODE]
    per_route = idle[BASENODE] / idle_routes
    poller_per_route = idle[POLLER] / idle_routes
    apply50, apply90 = percentile(scale["applied"], 50), percentile(scale["applied"], 90)
    # the target is in MB (10^6 bytes); the tables show MiB
    sync_mb = memory[SYNC].rss_kb * 1.024e-3 if SYNC in memory else float("nan")
    pid1_mb = memory[PID1].rss_kb * 1.024e-3
    return (
        f"Target (issue 3): propagation p50 <= 50 ms: {verdict(p50 <= 50)} ({p50:.1f} ms over "
        f"{len(lat)} changes; poller {percentile(prop[POLLER].all, 50) * 1000:.0f} ms, HAProxy DNS 1 s "
        f"{percentile(prop[DNS_1S].all, 50) * 1000:.0f} ms).",
        f"Target (issue 3): propagation p99 <= 250 ms: {verdict(p99 <= 250)} ({p99:.1f} ms).",
        f"Target (issue 3): 0 failed requests under load during {changes} membership changes: "
        f"{verdict(wrk.failed == 0)} ({wrk.failed} of {wrk.requests:,}; poller "
        f"{load[POLLER][1].failed} in {load[POLLER][0]} changes).",
        f"Target (issue 3): idle requests to Consul at most 1 per route per 5 min (0.2/min) with "
        f"{idle_routes} routes: {verdict(per_route <= 0.2)} ({idle[BASENODE]:.1f}/min in all, "
        f"{per_route:.3f} per route per minute; poller {poller_per_route:.1f} per route per minute).",
        f"Target (issue 3): apply under 100 ms with {scale_routes:,} services x {len(POOL)} instances: "
        + ("met" if apply90 < 100 else "met at p50, MISSED at p90" if apply50 < 100 else "MISSED")
        + f" (p50 {apply50:.1f} ms, p90 {apply90:.1f} ms; end to end p50 "
        f"{percentile(scale['e2e'], 50):.0f} ms).",
        f"Target (issue 3): memory under 60 MB at that scale: {verdict(sync_mb < 60 and pid1_mb < 60)} "
        f"(sync process {sync_mb:.1f} MB RSS, PID 1 {pid1_mb:.1f} MB; HAProxy's worker, not ours, in "
        "the memory table).",
    )
