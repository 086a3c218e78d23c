"""Template figure of issue 6: a KV key changed in Consul -> the application's config file rewritten and
the application signalled.

One `consul agent -dev` on free loopback ports. basenode runs as `basenode run --no-consul --no-haproxy
--config FILE -- APP`, whose file has one template, `[templates.app]`: an application config file rendered
from `kv("bench/greeting")`, with `reload_program = "app"` and `reload_signal = "HUP"`. The application is
a tiny Python script that waits for SIGHUP and, on each, appends the wall time and the file it then reads
to a marker file. The benchmark changes the key (PUT, at random moments) and times, from just before
each PUT: the destination file holding the new value, and the application signalled and reading it.

Side by side, before basenode starts, on the same agent and key: the floor (a bare blocking query on the
key, woken by the same kind of PUT: what Consul alone costs) and the seed's behaviour (a plain read of the
key every 5 s, as pyconfd polled).

Run alone: `.venv/bin/python bench/run.py --only kv_signal --out docs/benchmarks.md` (the sections of
the other families in that file are kept).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import random
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from basenode.supervise.process import RELOAD_HOLD_SECONDS
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
)
from tests.support.waiting import eventually

TITLE = "Templates: a KV key -> the application signalled (issue 6)"
KEY = "bench/greeting"
TARGET_MS = 100.0
SEED_POLL = 5.0  # pyconfd's interval: the seed read Consul every 5 s
GAP = (0.2, 0.5)  # s between changes, at random: isolated changes, as an operator makes them
TIMEOUT = 10.0  # s a change may take before it counts as missed

# The application: SIGHUP is blocked and taken with sigwaitinfo(), so its time is read the moment the
# signal is delivered, not when the interpreter next runs a handler. basenode starts it after the first
# render (the sync loop's first renders come before the app), so no signal comes during its start-up.
APP_CODE = r"""
import json, signal, sys, time

conf, marker = sys.argv[1], sys.argv[2]
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
signal.signal(signal.SIGHUP, lambda signum, frame: None)  # not ignored any more; still blocked
with open(marker, "a") as out:
    out.write(json.dumps({"t": time.time(), "ready": True}) + "\n")
    out.flush()
    while True:
        signal.sigwaitinfo({signal.SIGHUP})
        t = time.time()
        try:
            with open(conf) as f:
                text = f.read()
        except OSError as e:
            text = "unreadable: %s" % e
        out.write(json.dumps({"t": t, "text": text}) + "\n")
        out.flush()
"""

TEMPLATE = 'greeting = {{ kv("bench/greeting") }}\n'


# --- Consul KV on a connection of its own -------------------------------------------------------


class KvClient:
    """Raw KV reads and writes on one kept-alive connection (ConsulClient sends JSON bodies)."""

    def __init__(self, port: int, timeout: Optional[float] = 30.0) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def put(self, key: str, value: str) -> None:
        self.conn.request("PUT", f"/v1/kv/{key}", body=value.encode())
        resp = self.conn.getresponse()
        text = resp.read().decode()
        if resp.status != 200 or text.strip() != "true":
            raise RuntimeError(f"consul PUT /v1/kv/{key}: HTTP {resp.status} {text[:200]!r}")

    def get(self, key: str, index: int = 0, wait: str = "") -> Tuple[int, Optional[str]]:
        """(X-Consul-Index, the value as text or None when the key does not exist)."""
        query = f"?index={index}&wait={wait}" if index else ""
        self.conn.request("GET", f"/v1/kv/{key}{query}")
        resp = self.conn.getresponse()
        body = resp.read()
        new_index = int(resp.getheader("X-Consul-Index") or 0)
        if resp.status == 404:
            return new_index, None
        if resp.status != 200:
            raise RuntimeError(f"consul GET /v1/kv/{key}: HTTP {resp.status} {body[:200]!r}")
        raw = json.loads(body)[0]["Value"]
        return new_index, base64.b64decode(raw).decode() if raw is not None else ""

    def close(self) -> None:
        # shutdown() first: it wakes a thread blocked in recv() on this connection, close() alone may not
        with contextlib.suppress(OSError, AttributeError):
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


class Reader(threading.Thread):
    """Reads the key in a loop and records (wall time the answer arrived, value): either a blocking
    query that is asked again at once with the index of each answer (the floor), or a plain read
    every `poll` seconds (the seed)."""

    def __init__(self, port: int, poll: Optional[float] = None) -> None:
        super().__init__(daemon=True)
        self.kv = KvClient(port, timeout=None)  # a blocking read may wait as long as its `wait`
        self.poll = poll
        self.answers: List[Tuple[float, Optional[str]]] = []
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        index = 0
        if self.poll:  # a random phase, as the seed's loop had against the operator's writes
            self.stopping.wait(random.uniform(0, self.poll))
        try:
            while not self.stopping.is_set():
                index, value = self.kv.get(KEY, 0 if self.poll else index, "60s")
                t = time.time()
                with self.changed:
                    self.answers.append((t, value))
                    self.changed.notify_all()
                if self.poll:
                    self.stopping.wait(self.poll)
        except (OSError, http.client.HTTPException, ValueError) as e:
            if not self.stopping.is_set():
                self.error = e

    def wait_value(self, value: str, since: float, timeout: float) -> Optional[float]:
        """Wall time of the first answer holding `value` that arrived at or after `since`."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = next((t for t, v in self.answers if v == value and t >= since), None)
                left = deadline - time.monotonic()
                if found is not None or left <= 0 or self.error is not None:
                    return found
                self.changed.wait(left)

    def stop(self) -> None:
        self.stopping.set()
        self.kv.close()
        self.join(5)


# --- measuring ----------------------------------------------------------------------------------


def value_of(i: int, token: str) -> str:
    # zero-padded and tagged: no value is a substring of another, so `value in text` is exact
    return f"hello-{i:04d}-{token}"


@dataclass
class Change:
    value: str
    put_at: float  # time.time() just before the PUT
    put_ms: float  # the PUT's own round trip


@dataclass
class Result:
    changes: List[Change] = field(default_factory=list)
    file_ms: List[float] = field(default_factory=list)  # PUT -> destination holds the new value
    signal_ms: List[float] = field(default_factory=list)  # PUT -> app signalled, read the new value
    file_to_signal_ms: List[float] = field(default_factory=list)
    missed_file: int = 0
    missed_signal: int = 0
    signals: int = 0  # SIGHUPs the app got during the changes
    stale_signals: int = 0  # ... reading a file without the value just written
    status: Dict[str, object] = field(default_factory=dict)  # /status templates.app at the end


def floor_and_seed(agent: ConsulDev, changes: int, token: str) -> Tuple[Result, List[float], List[float]]:
    """PUTs at random moments with a blocking reader and a 5 s poller on the key, no basenode running.

    Returns the PUTs, PUT -> blocking answer (ms) and PUT -> the first poll that read this value or a
    later one (ms): a poll loop never sees a value that a later one replaced before its read, but its
    file is then as new as that change."""
    kv = KvClient(agent.http_port)
    kv.put(KEY, value_of(0, token))
    floor, seed = Reader(agent.http_port), Reader(agent.http_port, SEED_POLL)
    floor.start()
    seed.start()
    result = Result()
    floor_ms: List[float] = []
    try:
        eventually(lambda: floor.answers, 10, 0.01, "the floor reader's first answer")
        for value, t in make_changes(kv, changes, token, result):
            answered = floor.wait_value(value, t, TIMEOUT)
            if answered is None:
                result.missed_file += 1
            else:
                floor_ms.append((answered - t) * 1000)
        # the changes after the poller's last read: its next read is at most SEED_POLL away
        last = result.changes[-1].put_at if result.changes else time.time()
        seed.wait_value(value_of(changes, token), last, SEED_POLL + 5)
    finally:
        floor.stop()
        seed.stop()
        kv.close()
    if floor.error or seed.error:
        raise RuntimeError(f"kv_signal: a reader failed: {floor.error or seed.error!r}")
    number = {value_of(i, token): i for i in range(changes + 1)}
    polls = [(t, number.get(v or "", -1)) for t, v in seed.answers]
    seed_ms = []
    for i, change in enumerate(result.changes, 1):
        seen = next((t for t, n in polls if t >= change.put_at and n >= i), None)
        if seen is not None:
            seed_ms.append((seen - change.put_at) * 1000)
    return result, floor_ms, seed_ms


def write_files(workdir: Path) -> Tuple[Path, Path, Path, Path]:
    """The template, the basenode.toml rendering it for the app, the app -> (config, conf, marker, app)."""
    workdir.mkdir(parents=True, exist_ok=True)
    source, conf, marker = workdir / "app.conf.j2", workdir / "app.conf", workdir / "signals.jsonl"
    source.write_text(TEMPLATE)
    app = workdir / "app.py"
    app.write_text(APP_CODE)
    config = workdir / "basenode.toml"
    config.write_text(
        "[templates.app]\n"
        f'source = "{source}"\n'
        f'destination = "{conf}"\n'
        'reload_program = "app"\n'
        'reload_signal = "HUP"\n'
    )
    return config, conf, marker, app


class Marker:
    """The app's marker file, read as it grows: one JSON object per line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.lines: List[Dict[str, object]] = []

    def read(self) -> List[Dict[str, object]]:
        """The lines added since the last read."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *complete, self.partial = (self.partial + data).split(b"\n")
        new = [json.loads(line) for line in complete if line.strip()]
        self.lines += new
        return new


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):  # not written yet (later writes are atomic renames)
        return ""


def template_status(status_port: int) -> Dict[str, object]:
    """basenode's own counters for the template ({} when /status does not answer): a cross-check."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/status", timeout=5) as resp:
            data = json.load(resp)
    except (OSError, ValueError):
        return {}
    found = (data.get("templates") or {}).get("app")
    return found if isinstance(found, dict) else {}


def make_changes(kv: KvClient, changes: int, token: str, result: Result) -> Iterator[Tuple[str, float]]:
    """PUT a new value to the key, each at a random moment GAP after the caller has seen the previous
    one; yields (value, the wall time just before its PUT) and records the PUT's own round trip."""
    rng = random.Random()
    for i in range(1, changes + 1):
        time.sleep(rng.uniform(*GAP))
        value = value_of(i, token)
        t = time.time()
        kv.put(KEY, value)
        result.changes.append(Change(value, t, (time.time() - t) * 1000))
        yield value, t


def measure_basenode(ctx: Context, procs: Processes, agent: ConsulDev, changes: int, token: str) -> Result:
    workdir = ctx.scratch / "kv-signal"
    config, conf, marker_path, app = write_files(workdir)
    kv = KvClient(agent.http_port)
    kv.put(KEY, value_of(0, token))
    env = {k: v for k, v in clean_env().items() if not k.startswith(("BASENODE_", "CONSUL_"))}
    env.update(CONSUL_HTTP_ADDR=agent.http_addr, SHIV_ROOT=str(ctx.scratch / "shiv"))
    status_port = free_port()
    argv = [ctx.python, str(ctx.zipapp), "run", "--no-consul", "--no-haproxy", "--config", str(config)]
    argv += ["--state-dir", str(workdir / "state"), "--status-addr", f"127.0.0.1:{status_port}"]
    argv += ["--", ctx.python, str(app), str(conf), str(marker_path)]
    log = workdir / "basenode.log"
    proc = procs.start(argv, env=env, log=log)
    marker = Marker(marker_path)
    result = Result()
    try:

        def started() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"basenode exited with {proc.returncode}; see {log}")
            marker.read()
            return value_of(0, token) in read_text(conf) and any(m.get("ready") for m in marker.lines)

        eventually(started, 60, 0.01, "the first file written and the app running")
        # A reload for a program younger than RELOAD_HOLD_SECONDS waits until then (so that it cannot
        # arrive before the handler is set): what is measured here is a running application's reload.
        time.sleep(RELOAD_HOLD_SECONDS)
        marker.read()
        for value, t in make_changes(kv, changes, token, result):
            file_at: Optional[float] = None
            signal_at: Optional[float] = None
            while file_at is None or signal_at is None:
                now = time.time()
                if file_at is None and value in read_text(conf):
                    file_at = now
                for line in marker.read():
                    result.signals += 1
                    if value in str(line.get("text")):
                        signal_at = signal_at or float(line["t"])  # type: ignore[arg-type]
                    else:
                        result.stale_signals += 1
                if now - t > TIMEOUT:
                    break
                time.sleep(0.001)
            if file_at is None:
                result.missed_file += 1
            else:
                result.file_ms.append((file_at - t) * 1000)
            if signal_at is None:
                result.missed_signal += 1
            else:
                result.signal_ms.append((signal_at - t) * 1000)
            if file_at is not None and signal_at is not None:
                result.file_to_signal_ms.append((signal_at - file_at) * 1000)
        time.sleep(0.5)  # a late second signal for the last change would show here
        late = len(marker.read())
        result.signals += late
        result.stale_signals += late
        if proc.poll() is not None:
            raise RuntimeError(f"basenode exited with {proc.returncode} during the changes; see {log}")
        result.status = template_status(status_port)
    finally:
        kv.close()
        procs.stop(proc)
    return result


# --- the family ---------------------------------------------------------------------------------


def run(ctx: Context) -> Section:
    changes = ctx.reps(100, 10)
    token = f"{random.getrandbits(32):08x}"
    with Processes() as procs:
        agent = ConsulDev(procs, ctx.scratch / "consul-kv-signal")
        try:
            t = time.monotonic()
            reference, floor_ms, seed_ms = floor_and_seed(agent, changes, token)
            print(f"(floor and 5 s poll: {time.monotonic() - t:.0f} s)", flush=True)
            t = time.monotonic()
            result = measure_basenode(ctx, procs, agent, changes, token)
            print(f"(basenode: {time.monotonic() - t:.0f} s)", flush=True)
        finally:
            agent.close()
            procs.stop(agent.proc)
        leftovers = procs.leftovers()
    if leftovers:
        print(f"kv_signal: processes left behind: {leftovers}", flush=True)
    return Section(
        TITLE,
        (latency_table(result, reference, floor_ms, seed_ms, changes),),
        method(ctx),
        targets(result, floor_ms, seed_ms),
    )


def row(what: str, values: Sequence[float], missed: int = 0, digits: int = 1) -> Tuple[str, ...]:
    mean = sum(values) / len(values) if values else float("nan")
    return (
        what,
        str(len(values)) + (f" ({missed} missed)" if missed else ""),
        pct(values, 50, digits),
        pct(values, 90, digits),
        pct(values, 99, digits, min_samples=50),
        fmt(max(values) if values else float("nan"), digits),
        fmt(mean, digits),
    )


def latency_table(
    result: Result, reference: Result, floor_ms: List[float], seed_ms: List[float], changes: int
) -> Table:
    put_ms = [c.put_ms for c in reference.changes + result.changes]
    poll = SEED_POLL * 1000
    status = result.status
    writes = status.get("writes", "?")
    failures = ", ".join(
        f"{key} {status[key]}"
        for key in ("render_errors", "check_failures", "reload_failures", "output_errors")
        if key in status
    )
    return Table(
        "KV change -> file rewritten and application signalled (ms, from just before the PUT)",
        ("what", "changes", "p50", "p90", "p99", "max", "mean"),
        (
            row("the PUT itself (its HTTP round trip)", put_ms),
            row("floor: a blocking query on the key answers (no basenode)", floor_ms, reference.missed_file),
            row("basenode: the destination file holds the new value", result.file_ms, result.missed_file),
            row(
                "basenode: the application signalled, reading the new value",
                result.signal_ms,
                result.missed_signal,
            ),
            row("basenode: file seen -> application signalled", result.file_to_signal_ms),
            row(f"seed: a plain read every {SEED_POLL:g} s sees the change (measured)", seed_ms, digits=0),
            (
                f"seed: a read every {SEED_POLL:g} s, derived (uniform 0-{SEED_POLL:g} s)",
                "-",
                fmt(poll * 0.5, 0),
                fmt(poll * 0.9, 0),
                fmt(poll * 0.99, 0),
                fmt(poll, 0),
                fmt(poll * 0.5, 0),
            ),
        ),
        (
            f"{changes} changes per subject, each a PUT of a new value to `{KEY}` at a random moment "
            f"{GAP[0]:g}-{GAP[1]:g} s after the previous one was seen; the clock (`time.time()`, one "
            "machine, so the application's clock is the benchmark's) starts just before the PUT, so "
            "every row includes the PUT's round trip (first row). p99 only from 50 changes up.",
            "floor: the benchmark's own blocking read (`GET /v1/kv/KEY?index=N&wait=60s`), asked again "
            "at once after each answer, timed to the arrival of the answer holding the new value: "
            "Consul's commit and wake-up plus one HTTP answer, what no watcher can go below. Measured "
            "before basenode started, on the same agent and key.",
            "basenode, file: the destination polled every millisecond (read in full) until it holds the "
            "new value: the blocking query's wake in the sync process, the debounce (none for an "
            "isolated change), the render, the candidate's write and its rename. Application "
            "signalled: the wall time the app's `sigwaitinfo()` returned with the SIGHUP after which it "
            "read the new value: the file, then the sync process asking PID 1 over the control "
            "socket, and PID 1's kill(). file seen -> signalled is the difference per change; the "
            "file's side is a 1 ms poll, so it can be slightly negative. The changes begin "
            f"{RELOAD_HOLD_SECONDS:g} s after the application started: a reload for a younger program "
            "is held until then (basenode's guard against a signal arriving before its handler).",
            f"Signals during the changes: {result.signals} for {len(result.changes)} changes, "
            f"{result.stale_signals} without the new value in the file. basenode's /status for the "
            f"template at the end: {writes} writes (the first render included)"
            + (f", {failures}" if failures else "")
            + ".",
            f"seed, measured: the benchmark's own loop doing a plain `GET /v1/kv/KEY` every "
            f"{SEED_POLL:g} s (random phase), during the floor's changes, timed to the first read that "
            "returned this value or a later one (a later value means the seed's file was as new). "
            f"pyconfd's render, write and reload would come after the read. Derived: a change at a "
            f"random moment waits for the next read, uniform on 0-{SEED_POLL:g} s: mean and p50 "
            f"{SEED_POLL / 2:g} s.",
        ),
    )


def method(ctx: Context) -> Tuple[str, ...]:
    return (
        "One `consul agent -dev` (loopback, free ports). basenode runs as "
        f"`{ctx.python} dist/basenode run --no-consul --no-haproxy --config FILE -- APP` with "
        "CONSUL_HTTP_ADDR pointing at the agent; the file has one `[templates.app]` table: source "
        f'`{TEMPLATE.strip()}`, a destination of its own, `reload_program = "app"`, '
        '`reload_signal = "HUP"`. APP is a Python script (same interpreter) that blocks SIGHUP, takes '
        "each with `sigwaitinfo()`, reads the file and appends the time and the text to a marker "
        "file that the benchmark reads as it grows.",
    )


def targets(result: Result, floor_ms: List[float], seed_ms: List[float]) -> Tuple[str, ...]:
    p50, p99 = percentile(result.signal_ms, 50), percentile(result.signal_ms, 99)
    top = max(result.signal_ms) if result.signal_ms else float("nan")
    ok = p99 <= TARGET_MS and not result.missed_signal
    return (
        f"Target (issue 6): KV change -> app signalled within {TARGET_MS:.0f} ms: "
        + ("met" if ok else "MISSED")
        + f" (p50 {fmt(p50)} ms, p99 {fmt(p99)} ms, max {fmt(top)} ms over {len(result.signal_ms)} "
        f"changes" + (f", {result.missed_signal} missed" if result.missed_signal else "") + "; "
        f"file written p50 {fmt(percentile(result.file_ms, 50))} ms; floor, a bare blocking query, "
        f"p50 {fmt(percentile(floor_ms, 50))} ms; seed, a {SEED_POLL:g} s poll, p50 "
        f"{fmt(percentile(seed_ms, 50), 0)} ms).",
    )
