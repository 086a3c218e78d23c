"""Shared helpers for the benchmark families: processes, /proc readings, statistics, tables.

Ports, waiting, the Consul agent's command line and readiness, and the steady HTTP load come from the
tests' harness (tests/support), so that benchmarks and tests start the real components one way.

Benchmarks are not tests: nothing here asserts a time. Every process a family starts goes
through `Processes`, which stops it (and everything it spawned) when the family is done,
so a run leaves nothing behind even when it is interrupted.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from tests.support.consul_agent import PORT_NAMES, ConsulAgent
from tests.support.ports import free_port
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Context:
    """What every family gets: the interpreter and zipapp to measure, a scratch dir, the effort."""

    python: str  # the one interpreter that runs basenode and the Python baseline
    zipapp: Path
    scratch: Path  # removed by run.py at the end
    quick: bool = False  # fewer repetitions: a smoke run of the harness itself, not figures

    def reps(self, full: int, quick: int) -> int:
        return quick if self.quick else full


# --- tables -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    title: str
    headers: Tuple[str, ...]
    rows: Tuple[Tuple[str, ...], ...]
    notes: Tuple[str, ...] = ()  # what the figures include, in words, printed under the table

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append("| " + " | ".join("---" if i == 0 else "---:" for i in range(len(self.headers))) + " |")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def text(self) -> str:
        cells = [self.headers, *self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.headers))]

        def line(row: Sequence[str]) -> str:
            return "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
            )

        rule = "-" * len(line(self.headers))
        return "\n".join([self.title, rule, line(self.headers), rule, *map(line, self.rows), rule]) + "\n"


@dataclass(frozen=True)
class Section:
    """One family's output: its tables and a paragraph on how it was measured."""

    title: str
    tables: Tuple[Table, ...]
    method: Tuple[str, ...] = ()  # paragraphs: how it was measured
    summary: Tuple[str, ...] = ()  # one line per target of the issue, met or missed, shown first

    def markdown(self) -> str:
        lines = [f"## {self.title}", ""]
        if self.summary:
            lines += [f"- {line}" for line in self.summary] + [""]
        for paragraph in self.method:
            lines += [paragraph, ""]
        lines += [table.markdown() for table in self.tables]
        return "\n".join(lines).rstrip() + "\n"


def _section_lines(lines: Sequence[str], title: str) -> Optional[Tuple[int, int]]:
    """First and past-last line of the `## TITLE...` section: its heading up to the next `## `."""
    start = next((i for i, line in enumerate(lines) if line.startswith(f"## {title}")), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return start, end


def with_section(text: str, title: str, section: str) -> str:
    """`text` with its `## TITLE...` section replaced by `section` (in place), or `section` appended."""
    lines = text.splitlines(keepends=True)
    found = _section_lines(lines, title)
    if found is None:
        return text.rstrip() + "\n\n\n" + section  # two blank lines, as bench/run.py separates sections
    rest = "".join(lines[found[1] :])
    return "".join(lines[: found[0]]) + section + ("\n" + rest if rest else "")


# --- statistics ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), p in 0..100."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def pct(values: Sequence[float], p: float, digits: int = 1, min_samples: int = 1) -> str:
    """A percentile, or "-" when there are too few samples for it to mean anything."""
    return fmt(percentile(values, p), digits) if len(values) >= min_samples else "-"


def ratio(value: float, reference: float) -> str:
    if not reference or math.isnan(reference) or math.isnan(value):
        return "-"
    return f"{value / reference:.2f}x"


# --- /proc --------------------------------------------------------------------------------------


def proc_kb(path: str, keys: Sequence[str]) -> Dict[str, int]:
    """`Key:   123 kB` lines of a /proc file -> {key: kB}; missing or unreadable -> {}."""
    found: Dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in keys:
                    found[name] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return found


@dataclass(frozen=True)
class Memory:
    rss_kb: int
    pss_kb: Optional[int]  # None when smaps_rollup is unreadable (old kernel, other user)
    uss_kb: Optional[int]  # private pages only: what this process alone adds


def memory_of(pid: int) -> Memory:
    status = proc_kb(f"/proc/{pid}/status", ("VmRSS",))
    if "VmRSS" not in status:
        raise RuntimeError(f"pid {pid}: no VmRSS (gone?)")
    roll = proc_kb(f"/proc/{pid}/smaps_rollup", ("Pss", "Private_Clean", "Private_Dirty"))
    uss = roll["Private_Clean"] + roll["Private_Dirty"] if "Private_Clean" in roll else None
    return Memory(status["VmRSS"], roll.get("Pss"), uss)


def children(pid: int) -> List[int]:
    kids: List[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return kids


def descendants(pid: int) -> List[int]:
    found, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def proc_state(pid: int) -> str:
    """Field 3 of /proc/PID/stat (R, S, D, Z, ...); '' when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def start_time(pid: int) -> Optional[str]:
    """Field 22 of /proc/PID/stat: tells a process from a later one that reused its pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


# --- processes ----------------------------------------------------------------------------------


class Processes:
    """Starts processes and guarantees they are gone afterwards, descendants included.

    A supervisor may put its children in their own sessions, so killing our process group
    is not enough: we remember every descendant we ever saw (pid + start time, so a reused
    pid is never hit) and sweep them after the supervisor itself has stopped.
    """

    def __init__(self) -> None:
        self._started: List[subprocess.Popen] = []
        self._seen: Dict[int, str] = {}

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(
        self, argv: Sequence[str], env: Optional[Mapping[str, str]] = None, log: Optional[Path] = None
    ) -> subprocess.Popen:
        with open(log or os.devnull, "ab") as out:
            proc = subprocess.Popen(
                list(argv),
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the harness does not hit the subjects twice
            )
        self._started.append(proc)
        return proc

    def remember_descendants(self, proc: subprocess.Popen) -> List[int]:
        kids = descendants(proc.pid)
        for pid in kids:
            st = start_time(pid)
            if st is not None:
                self._seen.setdefault(pid, st)
        return kids

    def stop(self, proc: subprocess.Popen, grace: float = 20.0) -> Optional[float]:
        """SIGTERM (a graceful stop for every subject), SIGKILL the group after `grace` seconds.

        Returns the seconds from SIGTERM until the process had exited, None if it was gone already
        or had to be killed. Its group is killed while the exited leader is still unreaped, so the
        group id cannot have been reused by then.
        """
        took = None
        if proc.returncode is None:
            self.remember_descendants(proc)
            t0 = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            # send_signal() polls first (Python 3.9+): a process that had exited by itself is reaped
            # by now, so there is nothing to wait for and its group id may be reused: its remembered
            # descendants are left to the sweep.
            if proc.returncode is None:
                if _wait_unreaped(proc.pid, grace):
                    took = time.monotonic() - t0
                _killpg(proc.pid)
            proc.wait()
        if proc in self._started:
            self._started.remove(proc)
        self._sweep()
        return took

    def stop_all(self) -> None:
        for proc in reversed(list(self._started)):
            self.stop(proc)

    def _sweep(self) -> None:
        for pid, st in list(self._seen.items()):
            if start_time(pid) == st:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            else:
                del self._seen[pid]

    def leftovers(self) -> List[int]:
        return [pid for pid, st in self._seen.items() if start_time(pid) == st]


def _wait_unreaped(pid: int, timeout: float) -> bool:
    """True once `pid` has exited (left as a zombie for us to reap), False after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None:
            return True
        time.sleep(0.001)
    return False


def _killpg(pgid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)


def clean_env(**extra: str) -> Dict[str, str]:
    """The caller's environment without PYTHON* variables, plus `extra`.

    PYTHON* variables change what an interpreter does: PYTHONDONTWRITEBYTECODE=1 (set in many
    shells and Dockerfiles) makes basenode compile its modules at every start, while Debian's
    supervisord reads the .pyc files its package installed. A row that wants one says so.
    LC_ALL=C: bash's $EPOCHREALTIME and other tools print a decimal point.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["LC_ALL"] = "C"
    env.update(extra)
    return env


# --- machine facts ------------------------------------------------------------------------------


def first_line(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "?"


def consul_binary() -> Optional[str]:
    local = ROOT / ".deps" / "bin" / "consul"
    return str(local) if local.exists() else shutil.which("consul")


def load_average() -> str:
    """Other work on the machine skews every figure: say how busy it was."""
    try:
        with open("/proc/loadavg") as f:
            return ", ".join(f.read().split()[:3])
    except OSError:
        return "?"


def machine_facts(python: str) -> Tuple[Tuple[str, str], ...]:
    mem = proc_kb("/proc/meminfo", ("MemTotal",)).get("MemTotal", 0)
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        pass
    consul = consul_binary()
    return (
        ("CPUs (nproc)", first_line(["nproc"])),
        ("CPU model", cpu),
        ("memory", f"{mem / 1024 / 1024:.1f} GiB"),
        ("kernel", platform.release()),
        ("Python (measured interpreter)", f"{first_line([python, '--version'])} at {python}"),
        ("HAProxy", first_line(["haproxy", "-v"])),
        ("Consul", first_line([consul, "version"]) if consul else "not found"),
        ("supervisord", first_line(["supervisord", "--version"])),
        ("tini", first_line(["tini", "--version"])),
        ("hyperfine", first_line(["hyperfine", "--version"])),
    )


# --- Consul and backends (discovery family) -----------------------------------------------------


class ConsulClient:
    """A keep-alive HTTP client for the benchmark's own catalog and agent writes, to an agent on loopback.

    Not the tests' urllib client (tests/support/consul_agent.py): a new connection per write would put
    a TCP handshake inside every timed change."""

    def __init__(self, http_port: int) -> None:
        self.http_port = http_port
        self._conn: Optional[http.client.HTTPConnection] = None

    @property
    def http_addr(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def request(self, method: str, path: str, body: object = None) -> object:
        """One call on a kept-alive connection (reopened once if the agent closed it)."""
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30)
            try:
                self._conn.request(method, path, body=data)
                resp = self._conn.getresponse()
                text = resp.read().decode()
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
                continue
            if resp.status != 200:
                raise RuntimeError(f"consul {method} {path}: HTTP {resp.status} {text[:200]!r}")
            return json.loads(text) if text.strip() else None
        return None

    def catalog_register(self, node: str, service: str, service_id: str, port: int) -> None:
        """Straight into the catalog on an external node, no check: passing at once."""
        self.request(
            "PUT",
            "/v1/catalog/register",
            {
                "Node": node,
                "Address": "127.0.0.1",
                "Service": {"ID": service_id, "Service": service, "Address": "127.0.0.1", "Port": port},
            },
        )

    def catalog_deregister(self, node: str, service_id: str) -> None:
        self.request("PUT", "/v1/catalog/deregister", {"Node": node, "ServiceID": service_id})

    def agent_register(self, service: str, service_id: str, port: int, address: str = "127.0.0.1") -> None:
        """An agent service with a passing TTL check `ttl-<id>` (flip it with `set_check`)."""
        self.request(
            "PUT",
            "/v1/agent/service/register",
            {
                "ID": service_id,
                "Name": service,
                "Address": address,
                "Port": port,
                "Check": {"CheckID": f"ttl-{service_id}", "TTL": "10m", "Status": "passing"},
            },
        )

    def agent_deregister(self, service_id: str) -> None:
        self.request("PUT", f"/v1/agent/service/deregister/{service_id}")

    def set_check(self, service_id: str, passing: bool) -> None:
        self.request("PUT", f"/v1/agent/check/{'pass' if passing else 'fail'}/ttl-{service_id}")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class ConsulDev(ConsulClient):
    """The tests' `consul agent -dev` (tests/support/consul_agent.py: free loopback ports, every one
    set), started through `Processes` so that it is gone after the family, with `hcl` appended, and
    the keep-alive client above for the benchmark's own writes. `agent` is the tests' object for it:
    its helpers (join_wan, kv_put, ...) work on this agent too."""

    def __init__(
        self,
        procs: Processes,
        workdir: Path,
        binary: Optional[str] = None,
        datacenter: str = "dc1",
        hcl: Sequence[str] = (),
    ) -> None:
        binary = binary or consul_binary()
        if not binary:
            raise RuntimeError("consul not found: run `make system-deps`")
        workdir.mkdir(parents=True, exist_ok=True)
        self.ports = _distinct_ports(PORT_NAMES)
        super().__init__(self.ports["http"])
        self.node = f"bench-{os.getpid()}-{self.ports['http']}"
        self.agent = ConsulAgent(
            binary,
            ports=self.ports,
            node_name=self.node,
            data_dir=str(workdir / "data"),
            datacenter=datacenter,
        )
        self.log = workdir / "consul.log"
        argv = [*self.agent.command(), *(f"-hcl={text}" for text in hcl)]
        self.proc = procs.start(argv, env=clean_env(), log=self.log)
        eventually(self._ready, 30, 0.05, f"consul agent on {self.http_addr}")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"consul exited with {self.proc.returncode}; see {self.log}")
        return self.agent.ready()


def _distinct_ports(names: Sequence[str]) -> Dict[str, int]:
    ports: Dict[str, int] = {}
    while len(ports) < len(names):
        port = free_port()
        if port not in ports.values():
            ports[names[len(ports)]] = port
    return ports


def free_ports(count: int) -> List[int]:
    """`count` distinct free loopback ports (each was free when picked)."""
    return list(_distinct_ports([str(i) for i in range(count)]).values())


# A process of HTTP/1.1 keep-alive servers, one per NAME=PORT argument, each answering every request
# with 200 and its NAME as the body: the backends the subjects route to. asyncio, so that one
# interpreter serves many ports and a steady load without a thread per connection; a process of its
# own (not the tests' in-process tests/support/backends.py), so that serving wrk's load takes no
# time from the harness's probes and clocks.
BACKENDS_CODE = r"""
import asyncio, sys

async def serve(name, port):
    body = name.encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(body)

    async def handle(reader, writer):
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                close = b"connection: close" in request.lower() or request.startswith(b"GET / HTTP/1.0")
                writer.write(head + (b"Connection: close\r\n\r\n" if close else b"\r\n") + body)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    await server.serve_forever()

async def main():
    await asyncio.gather(*(serve(n, int(p)) for n, p in (a.split("=") for a in sys.argv[1:])))

asyncio.run(main())
"""


def start_backends(procs: Processes, names: Sequence[str], python: str, log: Path) -> Dict[str, int]:
    """Named HTTP backends on free loopback ports in one child process; returns {name: port}."""
    ports = dict(zip(names, free_ports(len(names))))
    procs.start(
        [python, "-c", BACKENDS_CODE, *(f"{n}={p}" for n, p in ports.items())], env=clean_env(), log=log
    )
    for name, port in ports.items():
        eventually(lambda port=port: http_get(port) is not None, 10, 0.02, f"backend {name} on {port}")
    return ports


def http_get(port: int, timeout: float = 1.0) -> Optional[str]:
    """One GET on a fresh loopback connection: the body of a 200, else None (refused, reset, non-200)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            chunks = []
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                chunks.append(chunk)
    except OSError:
        return None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return body.decode(errors="replace") if head.startswith(b"HTTP/1.1 200") else None
