"""What others ask of the running programs (the control socket, SIGHUP's reload): a signal, a
restart, a new program list. Only the loop's thread calls these."""

from __future__ import annotations

import logging
import time
from typing import Sequence

from .. import config
from .policy import only_order_differs
from .process import (
    BACKOFF,
    EXITED,
    FATAL,
    REMOVED,
    RESTARTING,
    RETIRED,
    RETIRING,
    STOP_SENT,
    STOPPED,
    WAITING,
    Proc,
    signal_name,
)
from .spawn import send
from .table import Table

log = logging.getLogger(__package__)  # one component, "supervise", for the whole supervisor


def signal_program(t: Table, name: str, sig: int, if_running: bool = False) -> bool:
    """Send `sig` to a running program's pid; True when sent. ValueError naming why not.

    `if_running` (a template's reload): a program that is not running, or is stopping, is no
    error and is sent nothing (it reads its files when it starts); one started less than
    RELOAD_HOLD_SECONDS (or its startsecs) ago gets the signal then, not before its handler."""
    p = t.procs.get(name)
    if if_running and p is not None and p.state not in REMOVED:
        if p.pid is None or p.state in STOP_SENT:
            log.debug("%s: not running (%s), %s not sent", name, p.view().state, signal_name(sig))
            return False
        hold_until = p.hold_until()
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
    p = t.running(name)
    log.info("%s: sending %s to pid %d (asked for)", name, signal_name(sig), p.pid)
    send(p.pid, sig)
    return True


def send_held(p: Proc, now: float) -> None:
    """The reload signals held for a program that had just started, once it has run long enough."""
    if not p.held_signals or now < p.hold_until():
        return
    held, p.held_signals = p.held_signals, []
    if p.pid is None or p.state in STOP_SENT:
        return  # it exited or is stopping: the next run reads its files as it starts
    for sig in held:
        log.info("%s: sending the held %s to pid %d", p.program.name, signal_name(sig), p.pid)
        send(p.pid, sig)


def restart_program(t: Table, name: str) -> None:
    """Stop a program (its stop signal, SIGKILL after its stop timeout) and start it again at once.

    A program that is not running (backing off, exited, FATAL) is started now, its failed starts
    forgotten. ValueError for an unknown program or during basenode's own stop."""
    p = t.find(name)
    if t.stopping:
        raise ValueError("basenode is stopping")
    now = time.monotonic()
    p.failed_starts = 0
    p.streak = 0
    if p.pid is None:
        if p.state != WAITING:
            p.restart_at = now
            t.set(p, BACKOFF)
        return
    stop_one(t, p, RESTARTING, now)


def replace_programs(t: Table, programs: Sequence[config.Program]) -> None:
    """Apply a new program list: new ones start (after their dependencies), removed ones stop,
    changed ones restart with their new definition; unchanged ones are not touched."""
    now = time.monotonic()
    wanted = {program.name: program for program in programs}
    for name, p in list(t.procs.items()):
        new = wanted.get(name)
        removed = p.state in REMOVED
        if new is None:
            if not removed:
                log.info("%s: removed from the config: stopping it", name)
                if p.pid is None:
                    t.forget(p)
                else:
                    stop_one(t, p, RETIRING, now)
        elif (
            new != p.program
            and not removed
            and p.state not in (EXITED, FATAL, STOPPED)  # those start again on a changed definition
            and only_order_differs(new, p.program)
        ):
            p.program = new  # depends_on orders starts: it applies from the next start on
        elif new != p.program or removed:
            log.info("%s: changed in the config: restarting it", name)
            p.program = new
            if p.state in (EXITED, FATAL, STOPPED, RETIRED):
                p.failed_starts = 0
                t.set(p, WAITING)
            elif p.pid is not None:
                stop_one(t, p, RESTARTING, now)
    for name, program in wanted.items():
        if name not in t.procs:
            log.info("%s: added to the config", name)
            t.procs[name] = Proc(program)
    for p in [p for p in t.procs.values() if p.state == RETIRED]:
        t.forget(p)  # removed and gone during basenode's stop
    t.dirty = True


def stop_one(t: Table, p: Proc, state: str, now: float) -> None:
    """Outside basenode's stop: the program's stop signal now, SIGKILL at its stop timeout (the
    loop's step); `state` (RESTARTING or RETIRING) says what follows its exit."""
    if p.pid is None:
        return
    p.kill_at = now + p.program.stop_timeout
    p.kill_logged = False
    t.set(p, state)
    log.info("%s: sending %s to pid %d", p.program.name, signal_name(p.program.stop_signal), p.pid)
    send(p.pid, p.program.stop_signal)
