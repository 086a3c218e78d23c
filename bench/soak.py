"""Soak (issue 5): a real `basenode run` under steady HTTP load through 10,000 membership changes.

    make soak                                      (runs: bench/soak.py --out docs/benchmarks.md)
    .venv/bin/python bench/soak.py --changes 500   (a quick check of a few minutes: prints, writes nothing)

basenode runs as a container runs it: `dist/basenode run` is PID 1 of its tree and supervises its own
Consul agent (a one-node server on free loopback ports), the sync child and HAProxy. wrk sends a steady
stream of requests through HAProxy's frontend to real loopback backends while this script changes the
routed service's membership in that agent at a steady rate. Every 1 % of the changes it reads each
process's memory, open file descriptors and threads from /proc and looks for zombies under PID 1.

With --out FILE it writes its section into FILE (docs/benchmarks.md), replacing the one an earlier
soak wrote and leaving the rest alone; `make bench` (bench/run.py) keeps this section when it rewrites
the file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import random
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` importable as a package
    sys.path.insert(0, str(ROOT))

from bench import common, discovery  # noqa: E402
from bench.common import ConsulClient, Processes, Table, fmt, free_ports, http_get, median, pct  # noqa: E402
from bench.discovery import (  # noqa: E402
    CONSUL_AGENT,
    HAPROXY_MASTER,
    HAPROXY_WORKER,
    PID1,
    SYNC,
    WRK,
    Subject,
    WrkResult,
)
from bench.run import code_state, default_python  # noqa: E402
from tests.support.waiting import eventually  # noqa: E402

TITLE = "Soak: membership changes under load (issue 5)"
MAKE_SOAK = ".venv/bin/python bench/soak.py --out docs/benchmarks.md"

SERVICE = "web"
STEADY = discovery.STEADY  # always passing: the route never runs out of servers
CHURN = tuple(f"c{i}" for i in range(8))  # registered, failed, passed and deregistered at random
ROLES = (PID1, SYNC, HAPROXY_MASTER, HAPROXY_WORKER, CONSUL_AGENT)
JUDGED = (PID1, SYNC, HAPROXY_MASTER, HAPROXY_WORKER)  # the agent is Consul's, judged by nobody here
SAMPLES = 100  # readings during the changes, one every 1 % of them
WINDOW = 5  # readings per median: after the warm-up, and at the end
# A zombie still there this long after it was seen is not one caught between exit and reaping.
ZOMBIE_RECHECK = 0.2
IDLE_AFTER_LOAD = 20.0  # HAProxy closes half its idle server connections every 5 s (pool-purge-delay)
MB = 1000.0  # the target is in MB; the tables show MiB
MIB = 1024.0
# basenode's own warnings and errors, and HAProxy's alerts; not HAProxy's [WARNING] notices (a server
# leaving maintenance is one) nor the agent's log, which are no news about basenode.
PROBLEM_RE = re.compile(r"basenode \S+ (warning|error|critical):|\[ALERT\]")


# --- readings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    pid: int
    rss_kb: int
    pss_kb: Optional[int]
    fds: int
    threads: int
    fd_targets: Tuple[str, ...] = ()  # what each open fd is (readlink): names what a growth holds


@dataclass(frozen=True)
class Sample:
    changes: int  # changes made before this reading
    processes: Dict[str, Reading]  # by role
    zombies: Tuple[str, ...]  # "PID (comm)" of the processes under PID 1 still zombies ZOMBIE_RECHECK later
    transient: int = 0  # zombies that were reaped by then: children read between their exit and their reaping


def read_process(pid: int) -> Optional[Reading]:
    try:
        memory = common.memory_of(pid)
        fds = os.listdir(f"/proc/{pid}/fd")
    except (RuntimeError, OSError):
        return None  # gone between finding it and reading it
    targets = []
    for fd in fds:
        with contextlib.suppress(OSError):  # closed meanwhile
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    threads = common.proc_kb(f"/proc/{pid}/status", ("Threads",)).get("Threads", 0)
    return Reading(pid, memory.rss_kb, memory.pss_kb, len(fds), threads, tuple(sorted(targets)))


def take_sample(procs: Processes, subject: Subject, changes: int) -> Sample:
    readings = {}
    for role, pid in discovery.basenode_processes(procs, subject).items():
        reading = read_process(pid)
        if reading is not None:
            readings[role] = reading
    seen = zombies_under(subject.proc.pid)
    lingering: Tuple[str, ...] = ()
    if seen:
        time.sleep(ZOMBIE_RECHECK)
        now = zombies_under(subject.proc.pid)
        lingering = tuple(f"{pid} ({common.comm(pid)})" for pid, st in seen.items() if now.get(pid) == st)
    return Sample(changes, readings, lingering, len(seen) - len(lingering))


def zombies_under(pid1: int) -> Dict[int, Optional[str]]:
    """{pid: start time} of the processes under `pid1` in state Z (exited, not yet reaped)."""
    return {pid: common.start_time(pid) for pid in common.descendants(pid1) if common.proc_state(pid) == "Z"}


# --- basenode with its own agent ----------------------------------------------------------------


def write_config(workdir: Path, ports: Mapping[str, int]) -> Path:
    """basenode's config: its agent is a one-node server with every port on loopback (the HTTP port
    comes from CONSUL_HTTP_ADDR), so that it collides with nothing else on the machine."""
    args = [
        "-bind=127.0.0.1",
        "-dns-port=-1",
        f"-serf-lan-port={ports['serf_lan']}",
        f"-serf-wan-port={ports['serf_wan']}",
        f"-server-port={ports['server']}",
    ]
    path = workdir / "basenode.toml"
    path.write_text(
        "[consul]\n"
        "server = true\n"
        "bootstrap_expect = 1\n"
        f'node_name = "soak-{os.getpid()}"\n'
        # JSON strings and arrays of them are TOML too
        f"data_dir = {json.dumps(str(workdir / 'consul'))}\n"
        f"extra_args = {json.dumps(args)}\n"
    )
    return path


def agent_ready(client: ConsulClient, subject: Subject) -> bool:
    if subject.proc.poll() is not None:
        raise RuntimeError(f"basenode exited with {subject.proc.returncode}; see {subject.log}")
    try:
        return bool(client.request("GET", "/v1/status/leader"))
    except (OSError, ValueError, RuntimeError):
        return False


def status_get(port: int, path: str) -> Optional[Tuple[int, str]]:
    """GET on basenode's status endpoint: (status, body), None when nothing answers there."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def metric(text: str, name: str) -> Optional[float]:
    """The sum of a Prometheus metric's samples (every label set), None when it is not there."""
    values = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.MULTILINE)
    return sum(float(v) for v in values) if values else None


# --- load and changes ---------------------------------------------------------------------------


def start_load(procs: Processes, workdir: Path, port: int, connections: int, delay_ms: int) -> Tuple:
    """wrk on `connections` keep-alive connections, each pausing `delay_ms` between requests: a steady
    stream that leaves the machine's CPUs to the subjects. Stopped with SIGINT, it prints its summary."""
    script = workdir / "delay.lua"
    script.write_text(f"function delay()\n  return {delay_ms}\nend\n")
    out = workdir / "wrk.txt"
    argv = [WRK, "-t", "1", "-c", str(connections), "-d", "24h", "--timeout", "5s", "-s", str(script)]
    return procs.start([*argv, f"http://127.0.0.1:{port}/"], log=out), out


def stop_load(wrk: object, out: Path) -> WrkResult:
    wrk.send_signal(signal.SIGINT)  # type: ignore[attr-defined]
    wrk.wait(timeout=30)  # type: ignore[attr-defined]
    return discovery.parse_wrk(out.read_text())


@dataclass
class Changes:
    made: Dict[str, int] = field(default_factory=dict)  # by kind: add, fail, pass, remove
    seconds: float = 0.0
    late: float = 0.0  # the most a change started after its slot (the script's own lag)
    samples: List[Sample] = field(default_factory=list)
    scrapes: int = 0  # GET /metrics on basenode's status endpoint, one per sample, as a scraper would
    scraped: int = 0  # ... that were answered 200
    metrics: Optional[str] = None  # the last answer


def make_changes(
    procs: Processes,
    subject: Subject,
    client: ConsulClient,
    backends: Mapping[str, int],
    count: int,
    interval: float,
    rng: random.Random,
) -> Changes:
    """`count` changes, one every `interval` s on a fixed schedule: each picks a churn instance at
    random and moves it one step through its cycle (add, fail, pass, remove), so that every change
    changes the servers HAProxy routes to."""
    result = Changes()
    steps = dict.fromkeys(CHURN, 0)
    every = max(1, count // SAMPLES)
    t0 = time.monotonic()
    for n in range(count):
        slot = t0 + n * interval
        pause = slot - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        result.late = max(result.late, -pause)
        name = rng.choice(CHURN)
        kind = discovery.churn_step(client, SERVICE, name, backends[name], steps[name])
        steps[name] = (steps[name] + 1) % len(discovery.CHURN_STEPS)
        result.made[kind] = result.made.get(kind, 0) + 1
        if (n + 1) % every == 0:
            result.samples.append(take_sample(procs, subject, n + 1))
            answer = status_get(subject.status_port, "/metrics")
            result.scrapes += 1
            if answer is not None and answer[0] == 200:
                result.scraped += 1
                result.metrics = answer[1]
        if subject.proc.poll() is not None:
            raise RuntimeError(f"basenode exited with {subject.proc.returncode}; see {subject.log}")
    result.seconds = time.monotonic() - t0
    return result


# --- one run ------------------------------------------------------------------------------------


@dataclass
class Soak:
    changes: Changes
    start: Sample  # idle, before load and changes
    end: Sample  # idle, after them
    load: WrkResult
    applies: Dict[str, List[float]]  # ms of each apply, by how, from basenode's log
    log_problems: List[str]  # warning and error lines of basenode's log
    exit_status: Optional[int]  # basenode's after SIGTERM
    leftovers: List[int]


def soak(ctx: common.Context, args: argparse.Namespace, consul: str) -> Soak:
    workdir = ctx.scratch / "soak"
    workdir.mkdir(parents=True)
    with Processes() as procs:
        backends = common.start_backends(procs, (*STEADY, *CHURN), ctx.python, workdir / "backends.log")
        http_port, serf_lan, serf_wan, server, frontend = free_ports(5)
        cfg = write_config(workdir, {"serf_lan": serf_lan, "serf_wan": serf_wan, "server": server})
        env_addr = f"127.0.0.1:{http_port}"
        flags = ("--config", str(cfg), "--consul-bin", consul)
        subject = discovery.start_basenode(
            ctx, procs, "basenode", workdir, env_addr, {SERVICE: frontend}, flags, run_agent=True
        )
        client = ConsulClient(http_port)
        try:
            eventually(lambda: agent_ready(client, subject), 60, 0.1, f"basenode's agent on {env_addr}")
            for name in STEADY:
                client.agent_register(SERVICE, f"{SERVICE}-{name}", backends[name])
            eventually(
                lambda: {http_get(frontend) for _ in range(4)} == set(STEADY),
                60,
                0.05,
                f"{SERVICE} on {frontend} served by {STEADY}",
            )
            time.sleep(2.0)
            start = take_sample(procs, subject, 0)
            wrk, wrk_out = start_load(procs, workdir, frontend, args.connections, args.delay_ms)
            time.sleep(2.0)  # wrk's connections are open and busy before the first change
            if wrk.poll() is not None:
                raise RuntimeError(f"wrk exited with {wrk.returncode}: {wrk_out.read_text()[-500:]}")
            print(f"soak: {args.changes} changes, one every {args.interval:g} s", flush=True)
            changes = make_changes(
                procs, subject, client, backends, args.changes, args.interval, random.Random(args.seed)
            )
            time.sleep(3.0)  # the last change is applied and its drained server deleted
            load = stop_load(wrk, wrk_out)
            time.sleep(IDLE_AFTER_LOAD)
            end = take_sample(procs, subject, args.changes)
        finally:
            client.close()
        procs.stop(subject.proc)
        exit_status = subject.proc.returncode
        leftovers = procs.leftovers()
    text = subject.log.read_text(errors="replace")
    applies: Dict[str, List[float]] = {}
    for how, ms in discovery.APPLIED_RE.findall(text):
        applies.setdefault(how, []).append(float(ms))
    problems = [line for line in text.splitlines() if PROBLEM_RE.search(line)]
    return Soak(changes, start, end, load, applies, problems, exit_status, leftovers)


# --- figures ------------------------------------------------------------------------------------


def windows(samples: Sequence[Sample], warmup: int) -> Tuple[List[Sample], List[Sample]]:
    """The first WINDOW readings from the end of the warm-up on, and the last WINDOW."""
    steady = [s for s in samples if s.changes >= warmup]
    return steady[:WINDOW], list(samples[-WINDOW:])


def level(window: Sequence[Sample], role: str, attr: str) -> float:
    values = [getattr(s.processes[role], attr) for s in window if role in s.processes]
    values = [v for v in values if v is not None]
    return median(values) if values else float("nan")


def pids(samples: Sequence[Sample], role: str) -> List[int]:
    seen: List[int] = []
    for s in samples:
        pid = s.processes[role].pid if role in s.processes else None
        if pid is not None and pid not in seen:
            seen.append(pid)
    return seen


def growth_kb(result: Soak, warmup: int, role: str, attr: str) -> float:
    """Median of the last readings minus median of the first after the warm-up, in kB; NaN when the
    role's process was replaced during the run (a restart or reload starts from scratch)."""
    first, last = windows(result.changes.samples, warmup)
    if len(pids(result.changes.samples, role)) != 1:
        return float("nan")
    return level(last, role, attr) - level(first, role, attr)


def mib(kb: Optional[float]) -> str:
    return "-" if kb is None else fmt(kb / MIB, 2)


def signed_kb(kb: float) -> str:
    return fmt(kb, 0) if kb != kb else f"{kb:+,.0f}"


def memory_table(result: Soak, warmup: int) -> Table:
    first, last = windows(result.changes.samples, warmup)
    rows = []
    for role in ROLES:
        start = result.start.processes.get(role)
        rows.append(
            (
                role,
                mib(start.rss_kb if start else None),
                mib(level(first, role, "rss_kb")),
                mib(level(last, role, "rss_kb")),
                signed_kb(growth_kb(result, warmup, role, "rss_kb")),
                mib(level(first, role, "pss_kb")),
                mib(level(last, role, "pss_kb")),
                signed_kb(growth_kb(result, warmup, role, "pss_kb")),
            )
        )
    changes = len(result.changes.samples) and result.changes.samples[-1].changes
    return Table(
        "Memory: before the load, after the warm-up and at the end (MiB; growth in kB)",
        ("process", "RSS start", "RSS warm", "RSS end", "RSS growth", "PSS warm", "PSS end", "PSS growth"),
        tuple(rows),
        (
            "RSS is VmRSS from /proc/PID/status, PSS is Pss from /proc/PID/smaps_rollup (pages shared "
            "with other processes counted in part). start: one reading once the route served both "
            "steady instances, before any load or change. One reading every "
            f"{max(1, changes // SAMPLES)} changes under load; warm: median of the first {WINDOW} from "
            f"change {warmup:,} on; end: median of the last {WINDOW} (up to change {changes:,}). "
            "growth = end - warm: what the process keeps accumulating once warmed up.",
            "The Consul agent is Consul's (Go, its heap and Raft log grow with the writes made to it) "
            "and is shown for scale, not judged.",
        ),
    )


def span(samples: Sequence[Sample], role: str, attr: str) -> str:
    values = [getattr(s.processes[role], attr) for s in samples if role in s.processes]
    return f"{min(values)}-{max(values)}" if values else "-"


def handles_table(result: Soak) -> Table:
    rows = []
    for role in ROLES:
        a, b = result.start.processes.get(role), result.end.processes.get(role)
        during = result.changes.samples
        seen = pids([result.start, *during, result.end], role)
        rows.append(
            (
                role,
                " -> ".join(map(str, seen)) or "-",
                str(a.fds) if a else "-",
                span(during, role, "fds"),
                str(b.fds) if b else "-",
                str(a.threads) if a else "-",
                span(during, role, "threads"),
                str(b.threads) if b else "-",
            )
        )
    return Table(
        "Open file descriptors and threads: start, during the changes (min-max), end",
        (
            "process",
            "pid",
            "fds start",
            "fds during",
            "fds end",
            "threads start",
            "threads during",
            "threads end",
        ),
        tuple(rows),
        (
            "fds: entries of /proc/PID/fd; threads: Threads in /proc/PID/status. start and end are "
            "taken idle, the same way: start before the load began, end "
            f"{IDLE_AFTER_LOAD:.0f} s after it stopped (HAProxy closes half its idle server "
            "connections every 5 s, its default pool-purge-delay). During the run the counts include "
            "the load's connections and the sync loop's momentary ones (`haproxy -c`, runtime API "
            "sockets, Consul queries). pid: more than one means the process was replaced.",
        ),
    )


def trend_table(result: Soak, warmup: int) -> Table:
    samples = result.changes.samples
    total = samples[-1].changes if samples else 0
    marks = sorted({warmup, *(total * k // 5 for k in range(1, 6))})
    chosen = [next((s for s in samples if s.changes >= m), None) for m in marks]
    picked = [s for s in chosen if s is not None]
    rows = []
    for role in ROLES:
        cells = [mib(result.start.processes[role].rss_kb) if role in result.start.processes else "-"]
        cells += [mib(s.processes[role].rss_kb) if role in s.processes else "-" for s in picked]
        rows.append((role, *cells))
    return Table(
        "RSS through the run, single readings (MiB)",
        ("process", "start", *(f"{s.changes:,}" for s in picked)),
        tuple(rows),
        ("Column headings: changes made before the reading.",),
    )


def load_table(result: Soak, args: argparse.Namespace) -> Table:
    c, w = result.changes, result.load
    errors = ", ".join(f"{k} {v}" for k, v in w.socket_errors.items() if v) or "0"
    applies = ", ".join(f"{how} {len(ms):,}" for how, ms in sorted(result.applies.items())) or "0"
    runtime = result.applies.get("runtime", [])
    readings = (result.start, *c.samples, result.end)
    lingering = max(len(s.zombies) for s in readings)
    transient = sum(s.transient for s in readings)
    return Table(
        "Changes, applies and requests",
        (
            "changes",
            "took (s)",
            "applies (log)",
            "runtime apply p50 / p99 / max (ms)",
            "requests",
            "req/s",
            "non-2xx",
            "socket errors",
            "failed",
            "zombies",
            "caught unreaped",
        ),
        (
            (
                f"{sum(c.made.values()):,}",
                fmt(c.seconds, 0),
                applies,
                f"{pct(runtime, 50)} / {pct(runtime, 99)} / {fmt(max(runtime) if runtime else float('nan'))}",
                f"{w.requests:,}",
                f"{w.requests / w.seconds:,.0f}" if w.seconds else "-",
                str(w.non_2xx),
                errors,
                str(w.failed),
                str(lingering),
                str(transient),
            ),
        ),
        (
            "Changes by kind: "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(c.made.items()))
            + f"; the script's own lag behind its schedule at most {c.late * 1000:.0f} ms. applies: "
            "`haproxy: applied by HOW` lines in basenode's log; changes that arrive while an apply runs "
            "are applied together by the next one. An apply's time is basenode's own log figure: "
            "candidate written, runtime API commands, verification, file promoted (no `haproxy -c`).",
            f"Load: `wrk -t 1 -c {args.connections} --timeout 5s` with a Lua `delay()` of "
            f"{args.delay_ms} ms between a connection's requests, keep-alive, from 2 s before the first "
            "change until 3 s after the last; failed = non-2xx + socket errors (connect, read, write, "
            "timeout).",
            "zombies: the most processes in state Z anywhere under PID 1 at one reading that were still "
            f"zombies {ZOMBIE_RECHECK * 1000:.0f} ms later; caught unreaped: those seen in state Z at a "
            "reading and reaped by then (a child read between its exit and its parent's wait, e.g. "
            "the sync loop's `haproxy -c`), summed over all readings.",
        ),
    )


def more_fds(start: Reading, end: Reading) -> str:
    """The kinds of fd open at `end` beyond those at `start`: `socket 4, pipe 1`."""

    def kinds(reading: Reading) -> Counter:
        return Counter(re.sub(r":\[\d+\]$", "", t) for t in reading.fd_targets)

    return ", ".join(f"{kind} {n}" for kind, n in sorted((kinds(end) - kinds(start)).items()))


def targets(result: Soak, warmup: int) -> Tuple[str, ...]:
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    growth = {role: growth_kb(result, warmup, role, "rss_kb") for role in JUDGED}
    worst = max(growth.values(), key=lambda v: float("inf") if v != v else v)
    fds = {
        r: (result.start.processes[r].fds, result.end.processes[r].fds)
        for r in JUDGED
        if r in result.start.processes and r in result.end.processes
    }
    threads = {
        r: (result.start.processes[r].threads, result.end.processes[r].threads)
        for r in JUDGED
        if r in result.start.processes and r in result.end.processes
    }
    readings = (result.start, *result.changes.samples, result.end)
    zombies = [len(s.zombies) for s in readings]
    w = result.load
    return (
        f"Target (issue 5): under 2 MB memory growth after the warm-up: {verdict(worst * 1.024 < 2 * MB)} ("
        + ", ".join(f"{r} {signed_kb(g)} kB" for r, g in growth.items())
        + "; RSS, median of the last readings - median of the first after the warm-up).",
        f"Target (issue 5): no fd growth: {verdict(all(b <= a for a, b in fds.values()) and len(fds) == 4)} ("
        + ", ".join(f"{r} {a} -> {b}" for r, (a, b) in fds.items())
        + "".join(
            f"; {r} holds more at end: {more_fds(result.start.processes[r], result.end.processes[r])}"
            for r, (a, b) in fds.items()
            if b > a
        )
        + ").",
        f"Target (issue 5): no thread growth: "
        f"{verdict(all(b <= a for a, b in threads.values()) and len(threads) == 4)} ("
        + ", ".join(f"{r} {a} -> {b}" for r, (a, b) in threads.items())
        + ").",
        f"Target (issue 5): no zombies: {verdict(max(zombies) == 0)} ({max(zombies)} at most in "
        f"{len(zombies)} readings, at end {len(result.end.zombies)}; "
        f"{sum(s.transient for s in readings)} caught between exit and reaping).",
        f"Target (issue 5): zero failed requests: {verdict(w.failed == 0)} ({w.failed} of {w.requests:,}).",
    )


def section(
    result: Soak, args: argparse.Namespace, warmup: int, run_facts: Sequence[str], python: str
) -> common.Section:
    c = result.changes
    facts = dict(common.machine_facts(python))
    scraped = (
        f"basenode's status endpoint answered {c.scraped} of {c.scrapes} GET /metrics (one per reading)"
        + (
            f"; its last answer counted {metric(c.metrics, 'basenode_syncs_total'):.0f} syncs"
            if c.metrics and metric(c.metrics, "basenode_syncs_total") is not None
            else ""
        )
        if c.scraped
        else "basenode's status endpoint answered none of the GET /metrics made at each reading (this "
        "build serves none)"
    )
    stop = (
        f"On SIGTERM after the run basenode exited with status {result.exit_status}"
        + (f"; processes left behind: {result.leftovers}" if result.leftovers else ", leaving nothing behind")
        + f". basenode's log had {len(result.log_problems)} warning or error lines of its own or "
        "alerts from HAProxy"
        + (f" (first: `{result.log_problems[0][:160]}`)" if result.log_problems else "")
        + "."
    )
    method = (
        *run_facts,
        f"`{python} dist/basenode run --config FILE --routes {SERVICE}:PORT/http --status-addr "
        "127.0.0.1:PORT --state-dir DIR` with no application: PID 1 supervises its own Consul agent "
        f"(Consul {facts['Consul'].split()[-1]}, a one-node server: `[consul] server = true`, "
        "`bootstrap_expect = 1`, "
        "`extra_args` binding every port to free loopback ports, the HTTP port from CONSUL_HTTP_ADDR), the "
        f"sync child and HAProxy ({facts['HAProxy'].split(' - ')[0]}). The service `{SERVICE}` has "
        f"{len(STEADY)} instances that stay passing and {len(CHURN)} more that come and go, all agent "
        "services with a TTL check, registered in basenode's own agent; every backend is a real HTTP "
        "server on loopback that stays up, so a failed request is the apply's doing.",
        f"{args.changes:,} changes, one every {args.interval * 1000:.0f} ms on a fixed schedule "
        f"({args.changes * args.interval / 60:.1f} min): each picks one of the {len(CHURN)} instances at "
        "random and moves it one step through register (passing), fail its check, pass it, deregister, "
        "so that every change adds or removes a server. Why this rate: 10,000 changes fit in about 10 "
        "minutes, and it is faster than one apply takes on this machine (`haproxy -c` alone is about "
        "50 ms of it), so the sync loop never idles: every change wakes its blocking query, and the "
        "changes that arrive while an apply runs are coalesced into the next one (basenode's debounce), "
        "as they would be in a busy cluster. A slower rate with one apply per change would take over "
        "15 minutes for the same number of changes.",
        f"The first {warmup:,} changes are the warm-up: caches, HAProxy's pools and the interpreter's "
        "arenas fill there, and the first GET /metrics imports prometheus-client into the sync process. "
        + scraped
        + ". "
        + stop,
    )
    return common.Section(
        TITLE,
        (
            memory_table(result, warmup),
            handles_table(result),
            trend_table(result, warmup),
            load_table(result, args),
        ),
        method,
        targets(result, warmup),
    )


# --- command line -------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--changes", type=int, default=10_000, help="membership changes (default 10000)")
    add("--interval", type=float, default=0.06, help="seconds between changes (default 0.06)")
    add("--warmup", type=int, default=500, help="changes before memory counts (default 500, at most 1/5)")
    add("--connections", type=int, default=4, help="wrk's keep-alive connections (default 4)")
    add("--delay-ms", type=int, default=4, help="pause between a connection's requests (default 4)")
    add("--seed", type=int, default=1, help="which instance each change picks (default 1)")
    add("--out", type=Path, help="write the Soak section into this Markdown file")
    add("--python", default=default_python(), help="interpreter that runs basenode")
    add("--zipapp", type=Path, default=ROOT / "dist" / "basenode")
    add("--keep", action="store_true", help="keep the scratch dir (basenode's log, wrk's output)")
    args = parser.parse_args(argv)
    if args.changes < SAMPLES:
        parser.error(f"--changes: at least {SAMPLES}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):  # a stopped soak still stops what it started
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    if not args.zipapp.exists():
        print(f"soak: {args.zipapp} not found; run `make zipapp`", file=sys.stderr)
        return 2
    for tool in ("haproxy", WRK):
        if not shutil.which(tool):
            print(f"soak: {tool} not found (make system-deps)", file=sys.stderr)
            return 2
    consul = common.consul_binary()
    if not consul:
        print("soak: consul not found (make system-deps)", file=sys.stderr)
        return 2
    warmup = min(args.warmup, args.changes // 5)
    command = f"{os.path.relpath(sys.executable, ROOT)} bench/soak.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    started = datetime.datetime.now(datetime.timezone.utc)
    load_at_start = common.load_average()
    measured_code = code_state()
    t0 = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="basenode-soak-"))
    try:
        ctx = common.Context(python=args.python, zipapp=args.zipapp.resolve(), scratch=scratch)
        result = soak(ctx, args, consul)
    finally:
        if args.keep:
            print(f"soak: kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.monotonic() - t0
    run_facts = (
        (
            f"Command: `make soak`, which runs `{MAKE_SOAK}`"
            if command == MAKE_SOAK
            else f"Command: `{command}`"
        )
        + f"; zipapp `{args.zipapp.name}` built from {measured_code}; {started:%Y-%m-%d %H:%M} UTC, took "
        f"{elapsed:.0f} s; load average (1, 5, 15 min) {load_at_start} at start, {common.load_average()} "
        "at end, on the machine of the Machine table above.",
    )
    report = section(result, args, warmup, run_facts, args.python)
    for table in report.tables:
        print(table.text(), flush=True)
    for line in (*report.method, *report.summary):
        print(line)
    if args.out:
        previous = args.out.read_text() if args.out.exists() else ""
        args.out.write_text(common.with_section(previous, TITLE, report.markdown()))
        print(f"soak: wrote its section into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
