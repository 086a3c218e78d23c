"""Changes to one service, timed as three observers see them: the floor, HAProxy's runtime state, traffic.

The machinery of the floor family (bench/floor.py), also used by bench/dependencies.py and bench/cluster.py:
a change is an agent registration of an instance (or its deregistration); bench/observe.py processes stamp
when a bare blocking query and HAProxy's runtime API show it; probes through HAProxy show when traffic does.
"""

from __future__ import annotations

import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import FrozenSet, List, Mapping, Optional, Sequence, Tuple

from bench import common, discovery
from bench.common import ConsulDev, Context, Processes, clean_env, pct
from bench.discovery import NEW, Subject, until_answers, until_gone
from tests.support.waiting import eventually

OBSERVE = Path(__file__).with_name("observe.py")
SERVICE = "web"
TIMEOUT = 10.0  # s a change may take before it counts as missed
APPLIED_RE = re.compile(r"applied by (\w+) in ([\d.]+) ms")
LINE_RE = re.compile(r"^(\d+\.\d+) ([\d,]*)$")


class Observer:
    """One bench/observe.py process; its lines read back as (time, ports) events."""

    def __init__(self, procs: Processes, kind: str, where: str, service: str, log: Path) -> None:
        self.kind, self.log = kind, log
        self.proc = procs.start(
            [sys.executable, str(OBSERVE), kind, where, service], env=clean_env(), log=log
        )
        self.events: List[Tuple[float, FrozenSet[int]]] = []
        self._offset, self._partial = 0, ""

    def _read(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"observer {self.kind} exited with {self.proc.returncode}; see {self.log}")
        with open(self.log, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        *lines, self._partial = (self._partial + data.decode(errors="replace")).split("\n")
        for line in lines:
            found = LINE_RE.match(line.strip())
            if found:
                ports = frozenset(int(p) for p in found.group(2).split(",") if p)
                self.events.append((float(found.group(1)), ports))

    def when(self, ports: FrozenSet[int], after: float, timeout: float) -> Optional[float]:
        """Seconds from `after` to the first event at or after it showing exactly `ports`; None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            self._read()
            for t, seen in self.events:
                if t >= after and seen == ports:
                    return t - after
            if time.monotonic() > deadline:
                return None
            time.sleep(0.002)

    def wait_showing(self, ports: FrozenSet[int], timeout: float = 60.0) -> None:
        def shows() -> bool:
            self._read()
            return bool(self.events) and self.events[-1][1] == ports

        eventually(shows, timeout, 0.02, f"observer {self.kind} showing ports {sorted(ports)}")


def observers(procs: Processes, agent_addr: str, subject: Subject, service: str) -> Tuple[Observer, Observer]:
    """The floor (a blocking query on the agent) and HAProxy's runtime state of `service`'s backend."""
    workdir = subject.log.parent
    sock = workdir / "state" / "haproxy.sock"
    floor = Observer(procs, "floor", agent_addr, service, workdir / f"observe-floor-{service}.log")
    runtime = Observer(procs, "haproxy", str(sock), service, workdir / f"observe-haproxy-{service}.log")
    return floor, runtime


@dataclass
class Timings:
    """Milliseconds from just before the agent call to each observer seeing the change."""

    floor: List[float] = field(default_factory=list)
    runtime: List[float] = field(default_factory=list)
    traffic: List[float] = field(default_factory=list)
    logged: List[float] = field(default_factory=list)  # basenode's own `applied by runtime in X ms`
    added: List[bool] = field(default_factory=list)  # per change: a registration (else a deregistration)
    missed: int = 0
    reloads: int = 0  # applies that were not runtime-API ones

    def of(self, values: List[float], added: Optional[bool]) -> List[float]:
        return [v for v, a in zip(values, self.added) if added is None or a == added]


def applied(subject: Subject, timeout: float = 2.0) -> List[Tuple[str, float]]:
    """The `applied by HOW in X ms` lines basenode logged since the last call (waits for one)."""
    deadline = time.monotonic() + timeout
    while True:
        subject.pending += subject.new_log()
        found = [(how, float(ms)) for how, ms in APPLIED_RE.findall(subject.pending)]
        if found or time.monotonic() > deadline:
            subject.pending = ""
            return found
        time.sleep(0.005)


def time_changes(
    agent: common.ConsulClient,
    subject: Subject,
    service: str,
    base: FrozenSet[int],
    backends: Mapping[str, int],
    changes: int,
    gap: Tuple[float, float],
    seen_by: Tuple[Observer, Observer],
    rng: random.Random,
    probe: bool = True,
) -> Timings:
    """`changes` agent calls on `service`: register one of NEW beside the `base` servers, deregister it."""
    floor, runtime = seen_by
    found = Timings()
    port = subject.ports[service]
    for i in range(changes):
        time.sleep(rng.uniform(*gap))  # a random phase against anything periodic
        name = NEW[(i // 2) % len(NEW)]
        service_id = f"{service}-{name}"
        adding = i % 2 == 0
        want = base | {backends[name]} if adding else base
        subject.new_log()
        subject.pending = ""
        t0 = time.monotonic()
        if adding:
            agent.agent_register(service, service_id, backends[name])
        else:
            agent.agent_deregister(service_id)
        traffic: Optional[float] = 0.0
        if probe:
            traffic = (
                until_answers(port, name, t0, TIMEOUT)
                if adding
                else until_gone(port, name, t0, TIMEOUT, misses=3 * (len(base) + 1))
            )
        at_floor = floor.when(want, t0, TIMEOUT)
        at_runtime = runtime.when(want, t0, TIMEOUT)
        if traffic is None or at_floor is None or at_runtime is None:
            found.missed += 1
            runtime.wait_showing(want)  # the next change starts from a known state
            continue
        found.added.append(adding)
        found.floor.append(at_floor * 1000)
        found.runtime.append(at_runtime * 1000)
        if probe:
            found.traffic.append(traffic * 1000)
        lines = applied(subject)
        found.logged += [ms for how, ms in lines if how == "runtime"]
        found.reloads += sum(how != "runtime" for how, _ in lines)
    return found


def start_routed(
    ctx: Context,
    procs: Processes,
    agent: ConsulDev,
    workdir: Path,
    ports: Mapping[str, int],
    watched: str,
    base: FrozenSet[int],
    flags: Sequence[str] = (),
) -> Tuple[Subject, Tuple[Observer, Observer]]:
    """basenode routing `ports`, serving `watched` from its `base` servers, with its two observers."""
    subject = discovery.start_basenode(ctx, procs, discovery.BASENODE, workdir, agent.http_addr, ports, flags)
    eventually(
        lambda: subject.proc.poll() is not None or (workdir / "state" / "haproxy.sock").exists(),
        120,
        0.05,
        f"basenode's HAProxy stats socket in {workdir}",
    )
    if subject.proc.poll() is not None:
        raise RuntimeError(f"basenode exited with {subject.proc.returncode}; see {subject.log}")
    seen_by = observers(procs, agent.http_addr, subject, watched)
    for observer in seen_by:
        observer.wait_showing(base, 120)
    return subject, seen_by


GAP = (0.05, 0.15)  # s between one change being seen and the next, propagation table
SCALE_GAP = (0.1, 0.3)


def stop_all(procs: Processes, subject: Subject, seen_by: Sequence[Observer]) -> None:
    for observer in seen_by:
        procs.stop(observer.proc)
    discovery.stop_subject(procs, subject)


def floor_and_runtime(t: Timings) -> Tuple[str, ...]:
    """Cells: changes (and missed), floor p50 and p99, runtime state p50 and p99."""
    return (
        str(len(t.runtime)) + (f" ({t.missed} missed)" if t.missed else ""),
        pct(t.floor, 50),
        pct(t.floor, 99, min_samples=100),
        pct(t.runtime, 50),
        pct(t.runtime, 99, min_samples=100),
    )


def load_note(at_start: str) -> str:
    return (
        f"Load average (1, 5, 15 min) of the machine: {at_start} when this family started, "
        f"{common.load_average()} when it ended. Other work on the cores slows basenode's CPU-bound "
        "steps (read, render, `haproxy -c`, apply) far more than the floor's wake: compare rows of "
        "one run, and ratios."
    )
