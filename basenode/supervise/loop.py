"""The supervisor's single-threaded event loop: wake on signals, children's output, other users' file
descriptors and timers; reap; act on signals; move every program a step; publish the states."""

from __future__ import annotations

import logging
import os
import selectors
import signal
import threading
import time
from typing import Callable, List, Optional, Sequence, Tuple

from .. import config, terminal
from . import changes, lifecycle, pid1, policy, stop
from .output import Mux, Stream
from .process import ACTIVE, BACKOFF, RUNNING, STARTING, STOP_SENT, ProgramState, describe_exit, signal_name
from .spawn import kill, send
from .table import Table

log = logging.getLogger(__package__)  # one component, "supervise", for the whole supervisor

POLL_INTERVAL = 0.05  # "is the process group empty yet" checks


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
        self._t = Table(programs, json_output=json_output, on_started=on_started)
        self._on_change = on_change
        self._on_reload = on_reload
        self._readers: List[Tuple[int, Callable[[], None]]] = []
        self._signals: List[int] = []
        self._states: Tuple[ProgramState, ...] = self._t.views()
        self._selector: Optional[selectors.BaseSelector] = None
        self._wake_r = -1
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

    # --- what others ask of the programs (see changes.py)

    def signal_program(self, name: str, sig: int, if_running: bool = False) -> bool:
        """Send `sig` to a running program's pid; True when sent (see changes.signal_program)."""
        return changes.signal_program(self._t, name, sig, if_running)

    def restart_program(self, name: str) -> None:
        """Stop a program and start it again at once (see changes.restart_program)."""
        changes.restart_program(self._t, name)

    def replace_programs(self, programs: Sequence[config.Program]) -> None:
        """Apply a new program list (see changes.replace_programs)."""
        changes.replace_programs(self._t, programs)

    def _publish(self) -> None:
        self._t.dirty = False
        states = self._t.views()
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
        t = self._t
        restore = self._install()
        try:
            now = time.monotonic()
            for name, why in policy.unresolvable([p.program for p in t.procs.values()]).items():
                lifecycle.go_fatal(t, t.procs[name], why, now)
            if not t.procs:
                log.warning("nothing to supervise")
            while True:
                self._reap()
                self._take_signals()
                now = time.monotonic()
                self._step(now)
                self._run_tickers(now)
                if t.dirty:
                    self._publish()
                if t.stop is not None and t.stop.done:
                    break
                for key, _ in self._selector.select(self._with_tickers(now, self._timeout(now))):
                    if key.data is None:
                        self._drain_wakeup()
                    elif isinstance(key.data, _Reader):
                        key.data.call()
                    elif isinstance(key.data, Stream):
                        t.mux.read(key.data)
            status = stop.exit_status(t)
            log.info("exiting with status %d", status)
            return status
        except BaseException:
            # A bug in the loop: leave no program behind us, running unsupervised.
            for p in t.procs.values():
                kill(p)
            raise
        finally:
            for p in t.procs.values():
                p.drop_probe()
            self._reap()
            t.mux.close_all()
            self._publish()
            restore()

    def _install(self) -> Callable[[], None]:
        """Self-pipe, signal handlers, empty mask, subreaper. Returns what undoes them."""
        t = self._t
        self._selector = selectors.DefaultSelector()
        t.mux = Mux(self._selector)
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._wake_r = r
        self._selector.register(r, selectors.EVENT_READ, None)
        for fd, callback in self._readers:
            self._selector.register(fd, selectors.EVENT_READ, _Reader(callback))
        old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        forwarded = [sig for p in t.procs.values() for sig in p.program.forward_signals]
        old_handlers = pid1.catch_signals(self._on_signal, forwarded)
        if any(p.program.main and p.program.output == "inherit" for p in t.procs.values()):
            t.terminal = terminal.claim(0)
        old_mask = signal.pthread_sigmask(signal.SIG_SETMASK, [])
        pid1.become_subreaper()

        def restore() -> None:
            if t.terminal is not None:
                terminal.release(t.terminal)
                t.terminal = None
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            pid1.restore_signals(old_handlers)
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
        if self._t.stop is not None:
            # Poll: "is this process group empty yet" has no event. Past the deadline, keep polling
            # (never spin) until the SIGKILLed processes are gone.
            left = self._t.stop.deadline - now
            return min(POLL_INTERVAL, left) if left > 0 else POLL_INTERVAL
        when: List[float] = []
        for p in self._t.procs.values():
            if p.held_signals and p.pid is not None:
                when.append(p.hold_until())
            if p.state == STARTING:
                when.append(p.spawned_at + p.program.startsecs)
            elif p.state == BACKOFF:
                when.append(p.restart_at)
            elif p.state == RUNNING and not p.ready:
                when.append(p.probe.due(now) if p.probe is not None else now + POLL_INTERVAL)
            elif p.state in STOP_SENT and p.pid is not None:
                when.append(p.kill_at)
        if not when:
            return None
        return max(0.0, min(when) - now)

    # ----------------------------------------------------------------- signals and reaping

    def _take_signals(self) -> None:
        t = self._t
        pending, self._signals = self._signals, []
        for sig in pending:
            if sig == signal.SIGCHLD:
                continue  # _reap runs on every wakeup anyway
            name = signal_name(sig)
            if sig == signal.SIGHUP and self._on_reload is not None and not t.stopping:
                self._reload()
            for p in t.procs.values():
                if p.pid is not None and sig in p.program.forward_signals:
                    log.info("%s: forwarding %s to pid %d", p.program.name, name, p.pid)
                    send(p.pid, sig)
            if sig in config.STOP_SIGNALS:
                if t.stopping:
                    log.info("%s: already stopping", name)
                else:
                    t.stop_signal = sig
                    stop.begin(t, f"got {name}", time.monotonic())

    def _reload(self) -> None:
        try:
            programs = self._on_reload()
        except Exception:
            log.exception("reload failed; the running programs stay")
            return
        if programs is not None:
            self.replace_programs(programs)

    def _reap(self) -> None:
        t = self._t
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = t.by_pid.pop(pid, None)
            if proc is None:
                on_exit = t.tracked.pop(pid, None)
                if on_exit is not None:
                    on_exit(status)
                else:
                    log.debug("reaped orphan %d (%s)", pid, describe_exit(status))
                continue
            lifecycle.on_exit(t, proc, status, time.monotonic())

    def _step(self, now: float) -> None:
        t = self._t
        if not t.stopping:
            for p in t.procs.values():
                if p.state in STOP_SENT and p.pid is not None and now >= p.kill_at:
                    kill(p)  # a restart or removal asked for, past its stop timeout
            lifecycle.start_due(t, now)
        if not t.stopping and not any(p.state in ACTIVE for p in t.procs.values()):
            stop.begin(t, "every program has finished", now)
        if t.stopping:
            stop.advance(t, now)


def supervise(
    programs: Sequence[config.Program],
    *,
    on_started: Optional[Callable[[str], None]] = None,
    on_change: Optional[Callable[[Tuple[ProgramState, ...]], None]] = None,
) -> int:
    """Run `programs` until done and return basenode's exit status (see the package docstring)."""
    return Supervisor(programs, on_started=on_started, on_change=on_change).run()
