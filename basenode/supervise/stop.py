"""basenode's own stop, program by program in reverse start order, and its exit status (the rules:
the package docstring)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import List, Optional

from .process import BACKOFF, RETIRING, STOPPED, STOPPING, WAITING, Proc, signal_name
from .spawn import group_alive, kill, send
from .table import Table

log = logging.getLogger(__package__)  # one component, "supervise", for the whole supervisor

KILL_GRACE = 0.5  # after SIGKILL at the stop deadline, how long to wait for the processes to go


@dataclass(frozen=True)
class Turn:
    """The stop of the program at the head of the queue, once its turn came: its stop signal sent
    (to its pid, when it still had one)."""

    kill_at: float  # SIGKILL to what is left of it from then on
    groups_signalled: bool = False  # its pid gone, what was left in its groups got the stop signal too


class OrderedStop:
    """The programs still to stop, in order, and how far the first one is."""

    def __init__(self, queue: List[Proc], deadline: float) -> None:
        self.queue = queue
        self.deadline = deadline  # every one left is killed then
        self.turn: Optional[Turn] = None  # the head's; None until its turn came

    @property
    def done(self) -> bool:
        return not self.queue

    def next(self) -> None:
        self.queue.pop(0)
        self.turn = None


def begin(t: Table, reason: str, now: float) -> None:
    """Start basenode's stop (once; a second request is ignored). Nothing restarts from then on."""
    if t.stop is not None:
        return
    t.dirty = True
    log.info("stopping: %s", reason)
    order = list(reversed(t.start_order))
    order += [p for p in t.procs.values() if p not in order]
    # A controller (stop_first) goes before what it controls, even though it started first.
    order.sort(key=lambda p: not p.program.stop_first)
    for p in order:
        p.drop_probe()
        if p.state in (WAITING, BACKOFF):
            t.set(p, STOPPED)
        p.groups = [g for g in p.groups if group_alive(g)]
    queue = [p for p in order if p.pid is not None or p.groups]
    longest = max((p.program.stop_timeout for p in queue), default=0.0)
    t.stop = OrderedStop(queue, now + longest)


def advance(t: Table, now: float) -> None:
    """Stop the head of the queue; the next one only once it and its process groups are gone."""
    s = t.stop
    assert s is not None
    while s.queue:
        p = s.queue[0]
        if p.pid is None:
            p.groups = [g for g in p.groups if group_alive(g)]
            if not p.groups:
                s.next()
                continue
        sig = p.program.stop_signal
        if s.turn is None:
            s.turn = Turn(kill_at=min(now + p.program.stop_timeout, s.deadline))
            if p.pid is not None:
                if p.state != RETIRING:  # that one stays removed from the config (shown as stopping)
                    t.set(p, STOPPING)
                log.info("%s: sending %s to pid %d", p.program.name, signal_name(sig), p.pid)
                send(p.pid, sig)
        if p.pid is None and not s.turn.groups_signalled:
            # Its main process is gone; what is left in its groups gets the same request.
            s.turn = dataclasses.replace(s.turn, groups_signalled=True)
            for g in p.groups:
                send(g, sig, group=True)
        if now >= s.turn.kill_at:
            kill(p)
        break
    if s.queue and now >= s.deadline:
        for p in s.queue:
            kill(p)
    if s.queue and now >= s.deadline + KILL_GRACE:
        # SIGKILLed and still there: a zombie whose parent is not us, or a process stuck in the
        # kernel. Waiting longer would not help; basenode's exit must stay bounded.
        for p in s.queue:
            log.warning(
                "%s: giving up on pid %s and process groups %s after SIGKILL",
                p.program.name,
                p.pid,
                p.groups,
            )
        s.queue = []
        s.turn = None


def exit_status(t: Table) -> int:
    """1 when a required or the main program went FATAL; else the main program's status; else
    128+N for the stop signal N; else 0 (every program finished)."""
    if t.fatal:
        return 1
    if t.main_status is not None:
        return t.main_status
    if t.stop_signal is not None:
        return 128 + t.stop_signal
    return 0
