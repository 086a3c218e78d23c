"""Supervise: PID-1 duties and a small process supervisor in one single-threaded event loop.

One loop waits in `selectors` on a self-pipe that `signal.set_wakeup_fd` writes a byte to for every
signal, and on every child's stdout/stderr pipe; timers (restart backoff, startsecs, stop timeouts,
readiness checks) become the select timeout. After every wakeup it reaps with
`waitpid(-1, WNOHANG)` until nothing is left, so no SIGCHLD is lost and orphans re-parented to us
(we are PID 1, or a child subreaper when we are not) never stay zombies longer than one cycle.

Semantics the rest of basenode and its users rely on:

- Start order: config order, except that a program waits until every program in its `depends_on`
  is up (running for `startsecs`, and its readiness condition holds when it has one: ready_file,
  ready_tcp, ready_http or ready_command, checked without blocking by ready.py) or has finished with
  status 0 (a one-shot task). A program whose dependency is FATAL, unknown or part of a cycle goes
  FATAL itself instead of waiting forever.
- A program that exits before it has run `startsecs` is a failed start, whatever its autorestart
  says (as in supervisord), unless it exited 0 and autorestart is not `always` (then it is simply
  done). Failed starts are retried with backoff; the `startretries`-th failed start in a row (at
  least the first when startretries <= 1) is FATAL. A program that was up and exits is restarted
  when autorestart is `always`, or `on-failure` and it exited non-zero or was killed by a signal.
- Restart delay: `backoff_initial` doubling per restart in a row up to `backoff_max`, minus up to
  20 % jitter (programs that crash together do not restart in lockstep); 0 restarts at once. The
  streak starts again once a run lasted at least `backoff_max`.
- Process groups: each program runs in its own session and process group. Its stop signal, and any
  forwarded signal, goes to its pid only, as tini does without -g: the program decides how to pass
  it on (a shell script to its job, HAProxy's master to its workers), and a group-wide signal would
  hit those children twice. SIGKILL after the stop timeout goes to the whole group, and processes
  left in a program's groups after it exited get its stop signal, then SIGKILL, so nothing it
  started outlives basenode (short of a daemon that made a session of its own; in a PID
  namespace the kernel ends those too when basenode, its PID 1, exits). Its own session also
  keeps the terminal's Ctrl-C away from the children: only basenode gets it, and it stops
  everything once. Its stdin is basenode's, the others get /dev/null. The exception is a main
  program whose output is `inherit` while basenode's stdin is a terminal: it runs in a process
  group of its own inside basenode's session, made the terminal's foreground group, as tini does
  (see terminal.py), so Ctrl-C and an interactive shell's job control are the application's.
- Stop (SIGTERM, SIGINT, SIGQUIT; the main program's exit; a required program's FATAL; every
  program finished): programs are stopped one by one in reverse start order, each with its
  stop_signal and SIGKILL after its stop_timeout; every one still alive when the longest stop
  timeout has passed since the stop began is killed, so basenode returns within that plus
  KILL_GRACE (it gives up on what SIGKILL could not remove, e.g. a zombie whose parent is not
  basenode). A second stop signal during a stop is ignored. Programs do not restart during a stop.
- Exit status: 1 when a required program (or the main program) went FATAL; else the main
  program's status (128+N when killed by signal N) if it ran; else 128+N for the stop signal N
  (143 for SIGTERM, as docker expects); else 0 (every program finished). A main program that
  cannot be executed gives 127 (not found) or 126 (not executable), as a shell would.
- Children start with default signal dispositions and an empty signal mask: basenode runs with an
  empty mask, signals it catches revert to the default on exec, signals it inherited as ignored
  get a no-op handler for the same reason, and Popen's restore_signals resets SIGPIPE/SIGXFSZ.
- Output: every line of a child's stdout/stderr goes to basenode's stdout/stderr as
  `NAME | line` (or a JSON log object); lines longer than 64 KiB are split, a partial last line is
  flushed at EOF, bytes are copied as they are (binary included). A program whose `output` is
  `inherit` writes to basenode's stdout/stderr itself: its bytes pass untouched.

Only the standard library is imported here: basenode as PID 1 must stay small.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import childenv, config, ready, terminal
from .log import iso_time

log = logging.getLogger(__name__)

# Program states, as ProgramState.state shows them.
WAITING = "waiting"  # for its dependencies
STARTING = "starting"  # spawned, not yet up for startsecs
RUNNING = "running"  # up (ProgramState.ready says whether its readiness condition held)
BACKOFF = "backoff"  # exited, restart scheduled
STOPPING = "stopping"  # stop signal sent
EXITED = "exited"  # finished and not restarted
FATAL = "fatal"  # gave up on it
STOPPED = "stopped"  # stopped by basenode's stop

MAX_LINE = 64 * 1024  # longer lines are split: memory per stream stays bounded
READ_SIZE = 64 * 1024
POLL_INTERVAL = 0.05  # "is the process group empty yet" checks
# A template's reload signal to a program younger than this (or than its startsecs) waits until then:
# a signal that arrives before the program has set its handler kills it (HUP's default action).
RELOAD_HOLD_SECONDS = 1.0
NOT_READY_WARNING = 30.0  # a program up this long whose readiness condition does not hold is logged once
KILL_GRACE = 0.5  # after SIGKILL at the stop deadline, how long to wait for the processes to go
DRAIN_READS = 16  # reads of a dead program's pipes before its exit is logged
PR_SET_CHILD_SUBREAPER = 36

# Signals basenode always catches: stops, SIGCHLD, and the usual forwarded ones (even with no program
# to forward them to, a SIGHUP must not kill PID 1 by its default action).
_CAUGHT = (signal.SIGCHLD, *config.STOP_SIGNALS, *config.FORWARDED_SIGNALS)
# Never touched: uncatchable, or reset for children by Popen(restore_signals=True).
_UNTOUCHED = {signal.SIGKILL, signal.SIGSTOP, signal.SIGPIPE, getattr(signal, "SIGXFSZ", signal.SIGPIPE)}


@dataclass(frozen=True)
class ProgramState:
    """A read-only view of one program, for the status endpoint and tests."""

    name: str
    state: str
    pid: Optional[int] = None
    restarts: int = 0  # times it was started again after its first start
    failed_starts: int = 0  # in a row; reset once it is up
    last_exit: Optional[int] = None  # exit status, 128+N when killed by signal N
    ready: bool = False  # up, and its readiness condition held (if it has one)
    started: Optional[float] = None  # wall-clock time of its current run's start (None: not running)
    required: bool = False  # its FATAL stops basenode (and fails /health)


def exit_code(status: int) -> int:
    """A waitpid status as a shell shows it: the exit status, or 128+N when killed by signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 255  # stopped/continued: waitpid without WUNTRACED does not report those


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal_name(os.WTERMSIG(status))}"
    return f"exited with status {exit_code(status)}"


def _random_fraction() -> float:
    """Uniform in [0, 1): enough for jitter, without importing `random` (PID 1 memory)."""
    return int.from_bytes(os.urandom(7), "big") / (1 << 56)


def backoff_delay(
    attempt: int, initial: float, maximum: float, rand: Callable[[], float] = _random_fraction
) -> float:
    """Delay before the `attempt`-th restart in a row (1-based): initial * 2**(attempt-1), capped at
    maximum, minus up to 20 % jitter. initial <= 0 means restart at once."""
    if initial <= 0 or attempt < 1:
        return 0.0
    base = min(maximum, initial * 2 ** min(attempt - 1, 62))
    return base * (1.0 - 0.2 * rand())


def _cut(data: bytes, limit: int) -> int:
    """Where to split an over-long line: at `limit`, moved back (at most 3 bytes) so that a UTF-8
    character is not cut in two. Binary data without such a boundary is cut at `limit`."""
    if len(data) <= limit:
        return len(data)
    cut = limit
    while cut > limit - 3 and cut > 1 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut if (data[cut] & 0xC0) != 0x80 else limit


def split_lines(pending: bytes, data: bytes, limit: int = MAX_LINE) -> Tuple[List[bytes], bytes]:
    """Whole lines (without their newline) out of pending + data, and what remains of a partial
    line. No line and no remainder is ever longer than `limit`: longer ones are split."""
    lines = (pending + data).split(b"\n")
    rest = lines.pop()
    out: List[bytes] = []
    for line in lines:
        while len(line) > limit:
            cut = _cut(line, limit)
            out.append(line[:cut])
            line = line[cut:]
        out.append(line)
    while len(rest) > limit:
        cut = _cut(rest, limit)
        out.append(rest[:cut])
        rest = rest[cut:]
    return out, rest


class _Output:
    """basenode's stdout/stderr, written with raw writes. A closed one is dropped, never fatal."""

    def __init__(self) -> None:
        self.dead: set = set()

    def write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view and fd not in self.dead:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                # Someone left our stdout non-blocking: wait until it drains (backpressure, no spin).
                _wait_writable(fd)
            except OSError as e:
                self.dead.add(fd)
                if e.errno not in (errno.EPIPE, errno.EBADF):
                    log.warning("cannot write to fd %d: %s; dropping its output", fd, e)


def _wait_writable(fd: int) -> None:
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_WRITE)
        sel.select()


class _Stream:
    """One pipe from a child: stdout or stderr of one run of a program."""

    __slots__ = ("as_json", "fd", "name", "out", "pending", "prefix")

    def __init__(self, fd: int, out: int, name: str, as_json: bool = False) -> None:
        self.fd = fd
        self.out = out
        self.name = name
        self.as_json = as_json
        self.prefix = f"{name} | ".encode()
        self.pending = b""

    def format(self, lines: Sequence[bytes]) -> bytes:
        if not self.as_json:
            return b"".join(self.prefix + line + b"\n" for line in lines)
        stream = "stdout" if self.out == 1 else "stderr"
        return b"".join(json_line(self.name, stream, line) for line in lines)


class _Reader:
    """A file descriptor someone else owns, watched by the loop (see Supervisor.watch_fd)."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback

    def call(self) -> None:
        try:
            self.callback()
        except Exception:
            log.exception("watched fd callback failed")


def json_line(program: str, stream: str, line: bytes) -> bytes:
    """A child's output line as one JSON log object (--log-format json), named after its program.

    A line that already is one of basenode's JSON log objects (the sync and register children log
    in the same format) keeps its own fields and gains the program's name.
    """
    text = line.decode("utf-8", "replace")
    entry = None
    if text.startswith("{"):
        try:
            entry = json.loads(text)
        except ValueError:
            entry = None
    if isinstance(entry, dict) and "component" in entry and "message" in entry:
        fields = entry.get("fields") if isinstance(entry.get("fields"), dict) else {}
        entry["fields"] = {**fields, "program": program}
    else:
        entry = {
            "time": iso_time(time.time()),
            "level": "info",
            "component": program,
            "message": text,
            "fields": {"program": program, "stream": stream},
        }
    return (json.dumps(entry, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


class _Proc:
    """Mutable run-time record of one program; only the loop touches it."""

    def __init__(self, program: config.Program) -> None:
        self.program = program
        self.state = WAITING
        self.pid: Optional[int] = None
        self.popen: Optional[subprocess.Popen] = None  # kept until reaped: see _on_exit
        self.groups: List[int] = []  # process groups of its runs that may still have members
        self.streams: List[_Stream] = []
        self.spawned_at = 0.0
        self.spawned_wall: Optional[float] = None
        self.up = False
        self.ready = False
        self.spawns = 0
        self.restarts = 0
        self.failed_starts = 0
        self.streak = 0  # restarts in a row, for the backoff
        self.last_exit: Optional[int] = None
        self.restart_at = 0.0
        self.stop_sent = False
        self.group_signalled = False
        self.kill_at = 0.0
        self.kill_logged = False
        self.restart_requested = False  # asked for (control socket, reload): start again once it exited
        self.held_signals: List[int] = []  # reload signals that came just after its start: sent later
        self.retiring = False  # removed from the config by a reload: forget it once it exited
        self.probe: Optional[ready.Probe] = None  # its readiness check, while up and not ready yet
        self.not_ready_logged = False

    def drop_probe(self) -> None:
        if self.probe is not None:
            self.probe.close()
            self.probe = None

    def view(self) -> ProgramState:
        return ProgramState(
            name=self.program.name,
            state=self.state,
            pid=self.pid,
            restarts=self.restarts,
            failed_starts=self.failed_starts,
            last_exit=self.last_exit,
            ready=self.ready,
            started=self.spawned_wall if self.pid is not None else None,
            required=self.program.required,
        )


def _one_line(command: Sequence[str], limit: int = 200) -> str:
    """A command for a log line: one line, and not a whole embedded script."""
    text = " ".join(command).replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _ignore(signum: int, frame: object) -> None:
    """Stands in for SIG_IGN: a caught signal reverts to the default in exec'd children."""


def _only_order_differs(a: config.Program, b: config.Program) -> bool:
    """The two definitions differ in depends_on alone (a running program need not restart for it)."""
    return dataclasses.replace(a, depends_on=b.depends_on) == b


def _send(pid: int, sig: int, group: bool = False) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as e:
        log.warning("cannot send signal %d to %s %d: %s", sig, "group" if group else "pid", pid, e)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _become_subreaper() -> None:
    """Orphans of our children come to us, not to init, when we are not PID 1 (tests, or under
    another init). Linux only; harmless where unsupported."""
    if os.getpid() == 1 or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            log.debug("prctl(PR_SET_CHILD_SUBREAPER) failed: errno %d", ctypes.get_errno())
    except (OSError, AttributeError, ImportError) as e:
        log.debug("cannot become a child subreaper: %s", e)


def _user_args(user: Optional[str], group: Optional[str] = None) -> Tuple[dict, Dict[str, str]]:
    """Popen arguments to run as `user` (name or uid) with its groups (`group`, when given, as the
    primary one), and the HOME/USER/LOGNAME it gets (as gosu and su-exec set them). KeyError when
    the user or group does not exist."""
    if not user and not group:
        return {}, {}
    import grp  # only when a program asks for a user
    import pwd

    gid = None
    if group:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    if not user:
        return ({} if os.getegid() == gid else {"group": gid, "extra_groups": [gid]}), {}
    pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    gid = pw.pw_gid if gid is None else gid
    env = {"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name}
    if os.geteuid() == pw.pw_uid and os.getegid() == gid:
        return {}, env  # already that user; a non-root basenode could not call setgroups anyway
    groups = os.getgrouplist(pw.pw_name, gid)
    return {"user": pw.pw_uid, "group": gid, "extra_groups": groups}, env


def _unresolvable(programs: Sequence[config.Program]) -> Dict[str, str]:
    """Programs that can never start because of themselves -> why: a dependency that does not exist,
    or a cycle through depends_on. (Programs behind them go FATAL in turn when the loop runs.)"""
    deps = {p.name: p.depends_on for p in programs}
    bad: Dict[str, str] = {}
    for p in programs:
        unknown = [d for d in p.depends_on if d not in deps]
        if unknown:
            bad[p.name] = f"depends on unknown program {unknown[0]!r}"
        else:
            cycle = _cycle_through(p.name, deps)
            if cycle:
                bad[p.name] = "depends_on has a cycle: " + " -> ".join(cycle)
    return bad


def _cycle_through(start: str, deps: Dict[str, Tuple[str, ...]]) -> Optional[List[str]]:
    """A path of depends_on from `start` back to itself, or None."""
    stack = [[start]]
    seen = set()
    while stack:
        path = stack.pop()
        for d in deps.get(path[-1], ()):
            if d == start:
                return [*path, d]
            if d not in seen:
                seen.add(d)
                stack.append([*path, d])
    return None


class Supervisor:
    """Runs programs until done; `run()` returns basenode's exit status.

    `states()` may be called from any thread while `run()` is running (it returns an immutable
    snapshot). Callbacks run in the loop and must return quickly; an exception in one is logged:
    `on_started(name)` each time a program becomes up and ready, `on_change(states)` with the new
    snapshot each time a program's state changes (e.g. to keep a status file current),
    `on_reload()` on SIGHUP: it returns the new program list (applied with `replace_programs`) or
    None to keep the running one. `json_output` wraps children's lines as JSON log objects.

    `watch_fd(fd, callback)` adds a file descriptor to the loop: `callback()` runs in the loop when
    it is readable (the control socket uses it), and may call `signal_program`, `restart_program`
    and `replace_programs`, which only the loop's thread may call."""

    def __init__(
        self,
        programs: Sequence[config.Program],
        *,
        on_started: Optional[Callable[[str], None]] = None,
        on_change: Optional[Callable[[Tuple[ProgramState, ...]], None]] = None,
        on_reload: Optional[Callable[[], Optional[Sequence[config.Program]]]] = None,
        json_output: bool = False,
    ) -> None:
        self._procs: Dict[str, _Proc] = {}
        for program in programs:
            if program.name in self._procs:
                raise ValueError(f"program {program.name!r} defined twice")
            self._procs[program.name] = _Proc(program)
        self._on_started = on_started
        self._on_change = on_change
        self._on_reload = on_reload
        self._json_output = json_output
        self._readers: List[Tuple[int, Callable[[], None]]] = []
        self._by_pid: Dict[int, _Proc] = {}
        self._start_order: List[_Proc] = []
        self._signals: List[int] = []
        self._stopping = False
        self._stop_queue: List[_Proc] = []
        self._stop_deadline = 0.0
        self._stop_signal: Optional[int] = None
        self._main_status: Optional[int] = None
        self._fatal = False  # a required or the main program went FATAL
        self._states: Tuple[ProgramState, ...] = tuple(p.view() for p in self._procs.values())
        self._dirty = False
        self._out = _Output()
        self._selector: Optional[selectors.BaseSelector] = None
        self._wake_r = -1
        self._terminal: Optional[terminal.Terminal] = None  # basenode's stdin, while the app may hold it
        self._tracked: Dict[int, Callable[[int], None]] = {}  # readiness commands' pids -> on exit
        self._tickers: List[Callable[[float], Optional[float]]] = []
        self._tick_at: Optional[float] = None

    def states(self) -> Tuple[ProgramState, ...]:
        return self._states

    def watch_fd(self, fd: int, callback: Callable[[], None]) -> None:
        """Call `callback()` in the loop whenever `fd` is readable (register before or during run)."""
        self._readers.append((fd, callback))
        if self._selector is not None:
            self._selector.register(fd, selectors.EVENT_READ, _Reader(callback))

    # --- other users of the loop (the control socket's connections): fds that come and go, and timers

    def unwatch_fd(self, fd: int) -> None:
        """Stop watching `fd` (added by watch_fd); the caller closes it."""
        self._readers = [(f, c) for f, c in self._readers if f != fd]
        if self._selector is not None and fd in self._selector.get_map():
            self._selector.unregister(fd)

    def add_ticker(self, tick: Callable[[float], Optional[float]]) -> None:
        """Call `tick(now)` (monotonic) on every turn of the loop; it returns when it next wants to be
        called (a monotonic time) or None, and the loop wakes up by then."""
        self._tickers.append(tick)

    def _run_tickers(self, now: float) -> None:
        wanted = []
        for tick in self._tickers:
            try:
                when = tick(now)
            except Exception:
                log.exception("loop ticker failed")
                continue
            if when is not None:
                wanted.append(when)
        self._tick_at = min(wanted) if wanted else None

    def _with_tickers(self, now: float, timeout: Optional[float]) -> Optional[float]:
        if self._tick_at is None:
            return timeout
        left = max(0.0, self._tick_at - now)
        return left if timeout is None else min(timeout, left)

    # ---

    def signal_program(self, name: str, sig: int, if_running: bool = False) -> bool:
        """Send `sig` to a running program's pid; True when sent. ValueError naming why not.

        `if_running` (a template's reload): a program that is not running, or is stopping, is no
        error and is sent nothing (it reads its files when it starts); one started less than
        RELOAD_HOLD_SECONDS (or its startsecs) ago gets the signal then, not before its handler."""
        p = self._procs.get(name)
        if if_running and p is not None and not p.retiring:
            if p.pid is None or p.state == STOPPING:
                log.debug("%s: not running (%s), %s not sent", name, p.state, signal_name(sig))
                return False
            hold_until = self._hold_until(p)
            if time.monotonic() < hold_until:
                log.info(
                    "%s: just started, %s held until it has run %.1f s",
                    name,
                    signal_name(sig),
                    hold_until - p.spawned_at,
                )
                if sig not in p.held_signals:
                    p.held_signals.append(sig)
                return False
        p = self._running(name)
        log.info("%s: sending %s to pid %d (asked for)", name, signal_name(sig), p.pid)
        _send(p.pid, sig)
        return True

    @staticmethod
    def _hold_until(p: _Proc) -> float:
        return p.spawned_at + max(p.program.startsecs, RELOAD_HOLD_SECONDS)

    def _send_held(self, p: _Proc, now: float) -> None:
        if not p.held_signals or now < self._hold_until(p):
            return
        held, p.held_signals = p.held_signals, []
        if p.pid is None or p.state == STOPPING:
            return  # it exited or is stopping: the next run reads its files as it starts
        for sig in held:
            log.info("%s: sending the held %s to pid %d", p.program.name, signal_name(sig), p.pid)
            _send(p.pid, sig)

    def restart_program(self, name: str) -> None:
        """Stop a program (its stop signal, SIGKILL after its stop timeout) and start it again at once.

        A program that is not running (backing off, exited, FATAL) is started now, its failed starts
        forgotten. ValueError for an unknown program or during basenode's own stop."""
        p = self._procs.get(name)
        if p is None or p.retiring:
            raise ValueError(f"no program {name!r}")
        if self._stopping:
            raise ValueError("basenode is stopping")
        now = time.monotonic()
        p.failed_starts = 0
        p.streak = 0
        if p.pid is None:
            if p.state != WAITING:
                p.restart_at = now
                self._set(p, BACKOFF)
            return
        p.restart_requested = True
        self._stop_one(p, now)

    def replace_programs(self, programs: Sequence[config.Program]) -> None:
        """Apply a new program list: new ones start (after their dependencies), removed ones stop,
        changed ones restart with their new definition; unchanged ones are not touched."""
        now = time.monotonic()
        wanted = {program.name: program for program in programs}
        for name, p in list(self._procs.items()):
            new = wanted.get(name)
            if new is None:
                if not p.retiring:
                    log.info("%s: removed from the config: stopping it", name)
                    p.retiring = True
                    self._stop_one(p, now)
            elif (
                new != p.program
                and not p.retiring
                and p.state not in (EXITED, FATAL, STOPPED)  # those start again on a changed definition
                and _only_order_differs(new, p.program)
            ):
                p.program = new  # depends_on orders starts: it applies from the next start on
            elif new != p.program or p.retiring:
                log.info("%s: changed in the config: restarting it", name)
                p.program, p.retiring = new, False
                if p.state in (EXITED, FATAL, STOPPED):
                    p.failed_starts = 0
                    self._set(p, WAITING)
                elif p.pid is not None:
                    p.restart_requested = True
                    self._stop_one(p, now)
        for name, program in wanted.items():
            if name not in self._procs:
                log.info("%s: added to the config", name)
                self._procs[name] = _Proc(program)
        self._forget_retired()
        self._dirty = True

    def _running(self, name: str) -> _Proc:
        p = self._procs.get(name)
        if p is None or p.retiring:
            raise ValueError(f"no program {name!r}")
        if p.pid is None:
            raise ValueError(f"program {name!r} is not running ({p.state})")
        return p

    def _stop_one(self, p: _Proc, now: float) -> None:
        """Outside a full stop: the program's stop signal now, SIGKILL at its stop timeout (see _step)."""
        if p.pid is None:
            return
        p.kill_at = now + p.program.stop_timeout
        p.kill_logged = False
        self._set(p, STOPPING)
        log.info("%s: sending %s to pid %d", p.program.name, signal_name(p.program.stop_signal), p.pid)
        _send(p.pid, p.program.stop_signal)

    def _forget_retired(self) -> None:
        for name, p in list(self._procs.items()):
            if p.retiring and p.pid is None:
                del self._procs[name]
                if p in self._start_order:
                    self._start_order.remove(p)
                self._dirty = True

    def _publish(self) -> None:
        self._dirty = False
        states = tuple(p.view() for p in self._procs.values())
        if states == self._states:
            return
        self._states = states
        if self._on_change is not None:
            try:
                self._on_change(states)
            except Exception:
                log.exception("on_change failed")

    # ----------------------------------------------------------------- the loop

    def run(self) -> int:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("supervise() must run in the main thread: it handles signals")
        restore = self._install()
        try:
            now = time.monotonic()
            for name, why in _unresolvable([p.program for p in self._procs.values()]).items():
                self._go_fatal(self._procs[name], why, now)
            if not self._procs:
                log.warning("nothing to supervise")
            while True:
                self._reap()
                self._take_signals()
                now = time.monotonic()
                self._step(now)
                self._run_tickers(now)
                if self._dirty:
                    self._publish()
                if self._stopping and not self._stop_queue:
                    break
                for key, _ in self._selector.select(self._with_tickers(now, self._timeout(now))):
                    if key.data is None:
                        self._drain_wakeup()
                    elif isinstance(key.data, _Reader):
                        key.data.call()
                    else:
                        self._read(key.data)
            status = self._exit_status()
            log.info("exiting with status %d", status)
            return status
        except BaseException:
            # A bug in the loop: leave no program behind us, running unsupervised.
            for p in self._procs.values():
                self._kill(p)
            raise
        finally:
            for p in self._procs.values():
                p.drop_probe()
            self._reap()
            self._close_streams()
            self._publish()
            restore()

    def _install(self) -> Callable[[], None]:
        """Self-pipe, signal handlers, empty mask, subreaper. Returns what undoes them."""
        self._selector = selectors.DefaultSelector()
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._wake_r = r
        self._selector.register(r, selectors.EVENT_READ, None)
        for fd, callback in self._readers:
            self._selector.register(fd, selectors.EVENT_READ, _Reader(callback))
        old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        caught = set(_CAUGHT)
        for p in self._procs.values():
            caught.update(p.program.forward_signals)
        caught -= {signal.SIGKILL, signal.SIGSTOP}
        old_handlers = {}
        for sig in caught:
            old_handlers[sig] = signal.signal(sig, self._on_signal)
        for sig in signal.valid_signals():
            if sig in caught or sig in _UNTOUCHED:
                continue
            try:
                if signal.getsignal(sig) == signal.SIG_IGN:
                    old_handlers[sig] = signal.signal(sig, _ignore)
            except (OSError, ValueError, RuntimeError):
                pass  # signals the C library reserves for itself
        if any(p.program.main and p.program.output == "inherit" for p in self._procs.values()):
            self._terminal = terminal.claim(0)
        old_mask = signal.pthread_sigmask(signal.SIG_SETMASK, [])
        _become_subreaper()

        def restore() -> None:
            if self._terminal is not None:
                terminal.release(self._terminal)
                self._terminal = None
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            signal.set_wakeup_fd(old_wakeup)
            self._selector.close()
            os.close(r)
            os.close(w)

        return restore

    def _on_signal(self, signum: int, frame: object) -> None:
        # Runs in the main thread between bytecodes: only record it, the loop acts on it.
        self._signals.append(signum)

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _timeout(self, now: float) -> Optional[float]:
        if self._stopping:
            # Poll: "is this process group empty yet" has no event. Past the deadline, keep polling
            # (never spin) until the SIGKILLed processes are gone.
            left = self._stop_deadline - now
            return min(POLL_INTERVAL, left) if left > 0 else POLL_INTERVAL
        when: List[float] = []
        for p in self._procs.values():
            if p.held_signals and p.pid is not None:
                when.append(self._hold_until(p))
            if p.state == STARTING:
                when.append(p.spawned_at + p.program.startsecs)
            elif p.state == BACKOFF:
                when.append(p.restart_at)
            elif p.state == RUNNING and not p.ready:
                when.append(p.probe.due(now) if p.probe is not None else now + POLL_INTERVAL)
            elif p.state == STOPPING and p.pid is not None:
                when.append(p.kill_at)
        if not when:
            return None
        return max(0.0, min(when) - now)

    # ----------------------------------------------------------------- signals and reaping

    def _take_signals(self) -> None:
        pending, self._signals = self._signals, []
        for sig in pending:
            if sig == signal.SIGCHLD:
                continue  # _reap runs on every wakeup anyway
            name = signal_name(sig)
            if sig == signal.SIGHUP and self._on_reload is not None and not self._stopping:
                self._reload()
            for p in self._procs.values():
                if p.pid is not None and sig in p.program.forward_signals:
                    log.info("%s: forwarding %s to pid %d", p.program.name, name, p.pid)
                    _send(p.pid, sig)
            if sig in config.STOP_SIGNALS:
                if self._stopping:
                    log.info("%s: already stopping", name)
                else:
                    self._stop_signal = sig
                    self._begin_stop(f"got {name}", time.monotonic())

    def _reload(self) -> None:
        try:
            programs = self._on_reload()
        except Exception:
            log.exception("reload failed; the running programs stay")
            return
        if programs is not None:
            self.replace_programs(programs)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = self._by_pid.pop(pid, None)
            if proc is None:
                on_exit = self._tracked.pop(pid, None)
                if on_exit is not None:
                    on_exit(status)
                else:
                    log.debug("reaped orphan %d (%s)", pid, describe_exit(status))
                continue
            self._on_exit(proc, status, time.monotonic())

    # ----------------------------------------------------------------- state machine

    def _set(self, p: _Proc, state: str) -> None:
        p.state = state
        self._dirty = True

    def _step(self, now: float) -> None:
        if not self._stopping:
            for p in self._procs.values():
                if p.state == STOPPING and p.pid is not None and now >= p.kill_at:
                    self._kill(p)  # a restart or removal asked for, past its stop timeout
            self._start_programs(now)
        if not self._stopping and not any(
            p.state in (WAITING, STARTING, RUNNING, BACKOFF, STOPPING) for p in self._procs.values()
        ):
            self._begin_stop("every program has finished", now)
        if self._stopping:
            self._advance_stop(now)

    def _start_programs(self, now: float) -> None:
        """Programs that are due: up after startsecs, ready, restart after backoff, dependencies up."""
        changed = True
        while changed and not self._stopping:
            changed = False
            for p in self._procs.values():
                if self._stopping:
                    break
                if p.state == STARTING and now >= p.spawned_at + p.program.startsecs:
                    self._mark_up(p)
                    changed = True
                self._send_held(p, now)
                if p.state == RUNNING and not p.ready:
                    changed |= self._check_ready(p)
                if p.state == BACKOFF and now >= p.restart_at:
                    self._spawn(p, now)
                    changed = True
                if p.state == WAITING:
                    blocked = self._dependency_failed(p)
                    if blocked:
                        self._go_fatal(p, blocked, now)
                        changed = True
                    elif self._dependencies_up(p):
                        self._spawn(p, now)
                        changed = True

    def _dependencies_up(self, p: _Proc) -> bool:
        for name in p.program.depends_on:
            d = self._procs.get(name)
            if d is None:  # removed by a reload: nothing to wait for
                continue
            if not ((d.state == RUNNING and d.ready) or (d.state == EXITED and d.last_exit == 0)):
                return False
        return True

    def _dependency_failed(self, p: _Proc) -> Optional[str]:
        for name in p.program.depends_on:
            d = self._procs.get(name)
            if d is None:
                continue
            if d.state == FATAL:
                return f"dependency {name!r} is FATAL"
            if d.state == EXITED and d.last_exit != 0:
                return f"dependency {name!r} exited with status {d.last_exit}"
        return None

    def _mark_up(self, p: _Proc) -> None:
        self._set(p, RUNNING)
        p.up = True
        p.failed_starts = 0
        log.debug("%s: up (pid %s)", p.program.name, p.pid)
        self._check_ready(p)

    def _check_ready(self, p: _Proc) -> bool:
        """Up: ready once its readiness condition holds (at once without one; see ready.py)."""
        if p.probe is None:
            preexec = terminal.child_defaults if self._terminal is not None else None
            p.probe = ready.probe_for(p.program, self._track, preexec)
        if p.probe is not None:
            now = time.monotonic()
            if not p.probe.poll(now):
                if not p.not_ready_logged and now - p.spawned_at >= NOT_READY_WARNING:
                    p.not_ready_logged = True
                    waiting = [
                        q.program.name for q in self._procs.values() if p.program.name in q.program.depends_on
                    ]
                    log.warning(
                        "%s: not ready after %.0f s (%s); waiting for it: %s",
                        p.program.name,
                        now - p.spawned_at,
                        ready.describe(p.program),
                        ", ".join(waiting) or "none",
                    )
                return False
            p.drop_probe()
            log.info("%s: ready: %s", p.program.name, ready.describe(p.program))
        p.ready = True
        self._dirty = True
        if self._on_started is not None:
            try:
                self._on_started(p.program.name)
            except Exception:
                log.exception("on_started(%r) failed", p.program.name)
        return True

    def _track(self, pid: int, on_exit: Callable[[int], None]) -> None:
        """A readiness command's child: the loop reaps it and hands its status to `on_exit`."""
        self._tracked[pid] = on_exit

    def _spawn(self, p: _Proc, now: float) -> None:
        prog = p.program
        p.drop_probe()
        fds: List[int] = []
        try:
            user_kwargs, user_env = _user_args(prog.user, prog.group)
            env = childenv.inherited(os.environ, prog.pass_env)  # no secrets unless it asks
            env.update(user_env)
            env.update(dict(prog.environment))
            inherit = prog.output == "inherit"
            if not inherit:
                out_r, out_w = os.pipe()
                fds += [out_r, out_w]
                err_r, err_w = os.pipe()
                fds += [err_r, err_w]
            # The terminal's foreground for the application: its own group in our session (see
            # terminal.py). Every child of a basenode that ignores SIGTTOU/SIGTTIN resets them.
            foreground = self._terminal is not None and prog.main and inherit
            preexec = None
            if foreground:
                preexec = terminal.take_foreground
            elif self._terminal is not None:
                preexec = terminal.child_defaults
            popen = subprocess.Popen(
                prog.command,
                stdin=None if prog.main else subprocess.DEVNULL,
                stdout=None if inherit else out_w,
                stderr=None if inherit else err_w,
                env=env,
                cwd=prog.directory,
                start_new_session=not foreground,  # own session and group: see the module docstring
                preexec_fn=preexec,
                restore_signals=True,
                close_fds=True,
                **user_kwargs,
            )
        except (OSError, subprocess.SubprocessError, ValueError, KeyError) as e:
            for fd in fds:
                os.close(fd)
            why = (
                f"user {prog.user!r} or group {prog.group!r} not found" if isinstance(e, KeyError) else str(e)
            )
            self._spawn_failed(p, e, why, now)
            return
        p.popen = popen
        p.pid = popen.pid
        p.groups.append(popen.pid)
        self._by_pid[popen.pid] = p
        p.streams = []
        if not inherit:
            os.close(out_w)
            os.close(err_w)
            as_json = prog.output == "json" or (prog.output is None and self._json_output)
            p.streams = [
                self._add_stream(out_r, 1, prog.name, as_json),
                self._add_stream(err_r, 2, prog.name, as_json),
            ]
        if p.spawns:
            p.restarts += 1
        p.spawns += 1
        p.spawned_at = now
        p.spawned_wall = time.time()
        p.up = p.ready = p.not_ready_logged = False
        p.held_signals = []  # for the run that exited: this one reads its files as it starts
        if p not in self._start_order:
            self._start_order.append(p)
        self._set(p, STARTING)
        log.info("%s: started pid %d: %s", prog.name, popen.pid, _one_line(prog.command))
        if prog.startsecs <= 0:
            self._mark_up(p)

    def _spawn_failed(self, p: _Proc, error: Exception, why: str, now: float) -> None:
        log.error("%s: cannot start %s: %s", p.program.name, p.program.command[0], why)
        if p.program.main:
            # What a shell answers for a command it cannot run.
            self._main_status = 127 if isinstance(error, FileNotFoundError) else 126
            self._set(p, FATAL)
            self._begin_stop("the application could not start", now)
            return
        self._failed_start(p, now, why)

    def _failed_start(self, p: _Proc, now: float, why: str) -> None:
        p.failed_starts += 1
        limit = max(1, p.program.startretries)
        if p.failed_starts >= limit:
            self._go_fatal(p, f"{why}; {p.failed_starts} failed start(s) in a row", now)
        else:
            self._schedule_restart(p, now, ran=0.0)

    def _schedule_restart(self, p: _Proc, now: float, ran: float) -> None:
        if ran >= p.program.backoff_max:
            p.streak = 0  # it ran well for a while: start the backoff from the beginning
        p.streak += 1
        delay = backoff_delay(p.streak, p.program.backoff_initial, p.program.backoff_max)
        p.restart_at = now + delay
        self._set(p, BACKOFF)
        log.info("%s: restart %d in %.3fs", p.program.name, p.restarts + 1, delay)

    def _go_fatal(self, p: _Proc, why: str, now: float) -> None:
        self._set(p, FATAL)
        log.error("%s: FATAL: %s", p.program.name, why)
        if p.program.required or p.program.main:
            self._fatal = True
            self._begin_stop(
                f"{'required' if p.program.required else 'main'} program {p.program.name} is FATAL", now
            )

    def _on_exit(self, p: _Proc, status: int, now: float) -> None:
        code = exit_code(status)
        pid = p.pid
        if p.program.main and self._terminal is not None:
            terminal.give_back(self._terminal)
        p.drop_probe()
        if p.popen is not None:
            p.popen.returncode = code  # reaped by us: Popen must never waitpid() this pid again
            p.popen = None
        p.pid = None
        p.last_exit = code
        self._dirty = True
        for s in p.streams:
            self._drain(s)
        if p.groups and p.groups[-1] == pid and not _group_alive(pid):
            p.groups.pop()
        what = describe_exit(status)
        prog = p.program
        ran = now - p.spawned_at
        if self._stopping:
            log.info("%s: %s", prog.name, what)
            if prog.main:
                self._main_status = code
            if p.state != FATAL:
                self._set(p, STOPPED)
            return
        if p.retiring:
            log.info("%s: %s; removed", prog.name, what)
            self._forget_retired()
            return
        if p.restart_requested:
            log.info("%s: %s; starting it again as asked", prog.name, what)
            p.restart_requested = False
            p.restart_at = now
            self._set(p, BACKOFF)
            return
        if prog.main:
            log.info("%s: %s", prog.name, what)
            self._main_status = code
            self._set(p, EXITED)
            self._begin_stop("the application exited", now)
            return
        if not p.up:
            if code == 0 and prog.autorestart != "always":
                log.info("%s: %s", prog.name, what)
                self._set(p, EXITED)
                return
            log.warning("%s: %s before it was up (startsecs %g)", prog.name, what, prog.startsecs)
            self._failed_start(p, now, f"{what} before it was up")
            return
        if prog.autorestart == "always" or (prog.autorestart == "on-failure" and code != 0):
            log.warning("%s: %s", prog.name, what)
            self._schedule_restart(p, now, ran)
        else:
            log.info("%s: %s", prog.name, what)
            self._set(p, EXITED)

    # ----------------------------------------------------------------- stopping

    def _begin_stop(self, reason: str, now: float) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._dirty = True
        log.info("stopping: %s", reason)
        order = list(reversed(self._start_order))
        order += [p for p in self._procs.values() if p not in order]
        # A controller (stop_first) goes before what it controls, even though it started first.
        order.sort(key=lambda p: not p.program.stop_first)
        for p in order:
            p.drop_probe()
            if p.state in (WAITING, BACKOFF):
                self._set(p, STOPPED)
            p.groups = [g for g in p.groups if _group_alive(g)]
        self._stop_queue = [p for p in order if p.pid is not None or p.groups]
        longest = max((p.program.stop_timeout for p in self._stop_queue), default=0.0)
        self._stop_deadline = now + longest

    def _advance_stop(self, now: float) -> None:
        """Stop the head of the queue; the next one only once it and its process groups are gone."""
        while self._stop_queue:
            p = self._stop_queue[0]
            if p.pid is None:
                p.groups = [g for g in p.groups if _group_alive(g)]
                if not p.groups:
                    self._stop_queue.pop(0)
                    continue
            sig = p.program.stop_signal
            if not p.stop_sent:
                p.stop_sent = True
                p.kill_at = min(now + p.program.stop_timeout, self._stop_deadline)
                if p.pid is not None:
                    self._set(p, STOPPING)
                    log.info("%s: sending %s to pid %d", p.program.name, signal_name(sig), p.pid)
                    _send(p.pid, sig)
            if p.pid is None and not p.group_signalled:
                # Its main process is gone; what is left in its groups gets the same request.
                p.group_signalled = True
                for g in p.groups:
                    _send(g, sig, group=True)
            if now >= p.kill_at:
                self._kill(p)
            break
        if self._stop_queue and now >= self._stop_deadline:
            for p in self._stop_queue:
                self._kill(p)
        if self._stop_queue and now >= self._stop_deadline + KILL_GRACE:
            # SIGKILLed and still there: a zombie whose parent is not us, or a process stuck in the
            # kernel. Waiting longer would not help; basenode's exit must stay bounded.
            for p in self._stop_queue:
                log.warning(
                    "%s: giving up on pid %s and process groups %s after SIGKILL",
                    p.program.name,
                    p.pid,
                    p.groups,
                )
            self._stop_queue = []

    def _kill(self, p: _Proc) -> None:
        if p.pid is not None and p.pid not in p.groups:
            _send(p.pid, signal.SIGKILL)
        for g in p.groups:
            _send(g, signal.SIGKILL, group=True)
        if not p.kill_logged and (p.pid is not None or p.groups):
            p.kill_logged = True
            log.warning("%s: did not stop within its stop timeout: SIGKILL", p.program.name)

    def _exit_status(self) -> int:
        if self._fatal:
            return 1
        if self._main_status is not None:
            return self._main_status
        if self._stop_signal is not None:
            return 128 + self._stop_signal
        return 0

    # ----------------------------------------------------------------- output

    def _add_stream(self, fd: int, out: int, name: str, as_json: bool) -> _Stream:
        os.set_blocking(fd, False)
        stream = _Stream(fd, out, name, as_json)
        self._selector.register(fd, selectors.EVENT_READ, stream)
        return stream

    def _read(self, s: _Stream) -> bool:
        """One read from a child's pipe; False when there is nothing (more) to read right now."""
        try:
            data = os.read(s.fd, READ_SIZE)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self._close_stream(s)
            return False
        lines, s.pending = split_lines(s.pending, data)
        if lines:
            self._out.write(s.out, s.format(lines))
        return True

    def _drain(self, s: _Stream) -> None:
        for _ in range(DRAIN_READS):
            if s.fd < 0 or not self._read(s):
                return

    def _close_stream(self, s: _Stream) -> None:
        if s.fd < 0:
            return
        if s.pending:
            self._out.write(s.out, s.format([s.pending]))
            s.pending = b""
        self._selector.unregister(s.fd)
        os.close(s.fd)
        s.fd = -1

    def _close_streams(self) -> None:
        for key in list(self._selector.get_map().values()):
            if isinstance(key.data, _Stream):
                self._drain(key.data)
                self._close_stream(key.data)


def supervise(
    programs: Sequence[config.Program],
    *,
    on_started: Optional[Callable[[str], None]] = None,
    on_change: Optional[Callable[[Tuple[ProgramState, ...]], None]] = None,
) -> int:
    """Run `programs` until done and return basenode's exit status (see the module docstring)."""
    return Supervisor(programs, on_started=on_started, on_change=on_change).run()
