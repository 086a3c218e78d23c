"""A program's way through its states: started when its dependencies are up, up after startsecs,
ready once its readiness condition holds, and after its exit restarted with backoff, done, or FATAL
(the rules: the package docstring)."""

from __future__ import annotations

import logging
import time

from .. import ready, terminal
from . import policy, stop
from .changes import send_held
from .process import (
    BACKOFF,
    EXITED,
    FATAL,
    RESTARTING,
    RETIRED,
    RETIRING,
    RUNNING,
    STARTING,
    STOPPED,
    WAITING,
    Proc,
    describe_exit,
    exit_code,
    one_line,
)
from .spawn import StartFailed, group_alive, start
from .table import Table

log = logging.getLogger(__package__)  # one component, "supervise", for the whole supervisor

NOT_READY_WARNING = 30.0  # a program up this long whose readiness condition does not hold is logged once


def start_due(t: Table, now: float) -> None:
    """Programs that are due: up after startsecs, ready, restart after backoff, dependencies up."""
    changed = True
    while changed and not t.stopping:
        changed = False
        for p in t.procs.values():
            if t.stopping:
                break
            if p.state == STARTING and now >= p.spawned_at + p.program.startsecs:
                mark_up(t, p)
                changed = True
            send_held(p, now)
            if p.state == RUNNING and not p.ready:
                changed |= check_ready(t, p)
            if p.state == BACKOFF and now >= p.restart_at:
                spawn(t, p, now)
                changed = True
            if p.state == WAITING:
                blocked = policy.dependency_failed(p, t.procs)
                if blocked:
                    go_fatal(t, p, blocked, now)
                    changed = True
                elif policy.dependencies_up(p, t.procs):
                    spawn(t, p, now)
                    changed = True


def mark_up(t: Table, p: Proc) -> None:
    t.set(p, RUNNING)
    p.failed_starts = 0
    log.debug("%s: up (pid %s)", p.program.name, p.pid)
    check_ready(t, p)


def check_ready(t: Table, p: Proc) -> bool:
    """Up: ready once its readiness condition holds (at once without one; see ready.py)."""
    if p.probe is None:
        preexec = terminal.child_defaults if t.terminal is not None else None
        p.probe = ready.probe_for(p.program, t.track, preexec)
    if p.probe is not None:
        now = time.monotonic()
        if not p.probe.poll(now):
            if not p.not_ready_logged and now - p.spawned_at >= NOT_READY_WARNING:
                p.not_ready_logged = True
                waiting = [q.program.name for q in t.procs.values() if p.program.name in q.program.depends_on]
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
    t.dirty = True
    if t.on_started is not None:
        try:
            t.on_started(p.program.name)
        except Exception:
            log.exception("on_started(%r) failed", p.program.name)
    return True


def spawn(t: Table, p: Proc, now: float) -> None:
    prog = p.program
    p.drop_probe()
    try:
        popen, pipes = start(prog, has_terminal=t.terminal is not None)
    except StartFailed as e:
        _spawn_failed(t, p, e, now)
        return
    p.popen = popen
    p.pid = popen.pid
    p.groups.append(popen.pid)
    t.by_pid[popen.pid] = p
    p.streams = []
    if pipes is not None:
        assert t.mux is not None
        as_json = prog.output == "json" or (prog.output is None and t.json_output)
        p.streams = [t.mux.add(pipes[0], 1, prog.name, as_json), t.mux.add(pipes[1], 2, prog.name, as_json)]
    if p.spawns:
        p.restarts += 1
    p.spawns += 1
    p.spawned_at = now
    p.spawned_wall = time.time()
    p.ready = p.not_ready_logged = False
    p.held_signals = []  # for the run that exited: this one reads its files as it starts
    if p not in t.start_order:
        t.start_order.append(p)
    t.set(p, STARTING)
    log.info("%s: started pid %d: %s", prog.name, popen.pid, one_line(prog.command))
    if prog.startsecs <= 0:
        mark_up(t, p)


def _spawn_failed(t: Table, p: Proc, failure: StartFailed, now: float) -> None:
    log.error("%s: cannot start %s: %s", p.program.name, p.program.command[0], failure.why)
    if p.program.main:
        # What a shell answers for a command it cannot run.
        t.main_status = 127 if isinstance(failure.error, FileNotFoundError) else 126
        t.set(p, FATAL)
        stop.begin(t, "the application could not start", now)
        return
    _failed_start(t, p, now, failure.why)


def _failed_start(t: Table, p: Proc, now: float, why: str) -> None:
    p.failed_starts += 1
    limit = max(1, p.program.startretries)
    if p.failed_starts >= limit:
        go_fatal(t, p, f"{why}; {p.failed_starts} failed start(s) in a row", now)
    else:
        _schedule_restart(t, p, now, ran=0.0)


def _schedule_restart(t: Table, p: Proc, now: float, ran: float) -> None:
    if ran >= p.program.backoff_max:
        p.streak = 0  # it ran well for a while: start the backoff from the beginning
    p.streak += 1
    delay = policy.backoff_delay(p.streak, p.program.backoff_initial, p.program.backoff_max)
    p.restart_at = now + delay
    t.set(p, BACKOFF)
    log.info("%s: restart %d in %.3fs", p.program.name, p.restarts + 1, delay)


def go_fatal(t: Table, p: Proc, why: str, now: float) -> None:
    t.set(p, FATAL)
    log.error("%s: FATAL: %s", p.program.name, why)
    if p.program.required or p.program.main:
        t.fatal = True
        stop.begin(
            t, f"{'required' if p.program.required else 'main'} program {p.program.name} is FATAL", now
        )


def on_exit(t: Table, p: Proc, status: int, now: float) -> None:
    """Its pid was reaped with `status`: what follows depends on the state it exited in."""
    code = exit_code(status)
    pid = p.pid
    if p.program.main and t.terminal is not None:
        terminal.give_back(t.terminal)
    p.drop_probe()
    if p.popen is not None:
        p.popen.returncode = code  # reaped by us: Popen must never waitpid() this pid again
        p.popen = None
    p.pid = None
    p.last_exit = code
    t.dirty = True
    assert t.mux is not None
    for s in p.streams:
        t.mux.drain(s)
    if p.groups and p.groups[-1] == pid and not group_alive(pid):
        p.groups.pop()
    what = describe_exit(status)
    prog = p.program
    ran = now - p.spawned_at
    if t.stopping:
        log.info("%s: %s", prog.name, what)
        if prog.main:
            t.main_status = code
        if p.state == RETIRING:
            t.set(p, RETIRED)
        elif p.state != FATAL:
            t.set(p, STOPPED)
        return
    if p.state == RETIRING:
        log.info("%s: %s; removed", prog.name, what)
        t.forget(p)
        return
    if p.state == RESTARTING:
        log.info("%s: %s; starting it again as asked", prog.name, what)
        p.restart_at = now
        t.set(p, BACKOFF)
        return
    if prog.main:
        log.info("%s: %s", prog.name, what)
        t.main_status = code
        t.set(p, EXITED)
        stop.begin(t, "the application exited", now)
        return
    if p.state == STARTING:  # it never was up
        if code == 0 and prog.autorestart != "always":
            log.info("%s: %s", prog.name, what)
            t.set(p, EXITED)
            return
        log.warning("%s: %s before it was up (startsecs %g)", prog.name, what, prog.startsecs)
        _failed_start(t, p, now, f"{what} before it was up")
        return
    if prog.autorestart == "always" or (prog.autorestart == "on-failure" and code != 0):
        log.warning("%s: %s", prog.name, what)
        _schedule_restart(t, p, now, ran)
    else:
        log.info("%s: %s", prog.name, what)
        t.set(p, EXITED)
