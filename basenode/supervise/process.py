"""One supervised program's run-time record, its states, and how an exit status reads."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence

from .. import config, ready

if TYPE_CHECKING:
    from .output import Stream

# Program states, as ProgramState.state shows them.
WAITING = "waiting"  # for its dependencies
STARTING = "starting"  # spawned, not yet up for startsecs
RUNNING = "running"  # up (ProgramState.ready says whether its readiness condition held)
BACKOFF = "backoff"  # exited, restart scheduled
STOPPING = "stopping"  # basenode's own stop sent it its stop signal
EXITED = "exited"  # finished and not restarted
FATAL = "fatal"  # gave up on it
STOPPED = "stopped"  # stopped by basenode's stop

# States of the record alone, shown as the state in PUBLIC. Each says what follows the exit of a
# program sent its stop signal outside basenode's own stop.
RESTARTING = "restarting"  # asked for (control socket, reload): started again once it exited
RETIRING = "retiring"  # removed from the config by a reload: forgotten once it exited
RETIRED = "retired"  # a retiring program that exited during basenode's stop (kept, as every record is)
PUBLIC = {RESTARTING: STOPPING, RETIRING: STOPPING, RETIRED: STOPPED}

STOP_SENT = (STOPPING, RESTARTING, RETIRING)  # its stop signal sent, SIGKILL at kill_at
REMOVED = (RETIRING, RETIRED)  # no longer in the config: asking for it by name finds nothing
ACTIVE = (WAITING, STARTING, RUNNING, BACKOFF, *STOP_SENT)  # basenode has not finished with it

# A template's reload signal to a program younger than this (or than its startsecs) waits until then:
# a signal that arrives before the program has set its handler kills it (HUP's default action).
RELOAD_HOLD_SECONDS = 1.0


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


class Proc:
    """Mutable run-time record of one program; only the loop touches it."""

    def __init__(self, program: config.Program) -> None:
        self.program = program
        self.state = WAITING
        self.pid: Optional[int] = None
        self.popen: Optional[subprocess.Popen] = None  # kept until reaped: see lifecycle.on_exit
        self.groups: List[int] = []  # process groups of its runs that may still have members
        self.streams: List[Stream] = []
        self.spawned_at = 0.0
        self.spawned_wall: Optional[float] = None
        self.ready = False
        self.spawns = 0
        self.restarts = 0
        self.failed_starts = 0
        self.streak = 0  # restarts in a row, for the backoff
        self.last_exit: Optional[int] = None
        self.restart_at = 0.0
        self.kill_at = 0.0  # outside basenode's own stop, when a state in STOP_SENT turns to SIGKILL
        self.kill_logged = False
        self.held_signals: List[int] = []  # reload signals that came just after its start: sent later
        self.probe: Optional[ready.Probe] = None  # its readiness check, while up and not ready yet
        self.not_ready_logged = False

    def drop_probe(self) -> None:
        if self.probe is not None:
            self.probe.close()
            self.probe = None

    def hold_until(self) -> float:
        """Until when a reload signal to this run is held (see RELOAD_HOLD_SECONDS)."""
        return self.spawned_at + max(self.program.startsecs, RELOAD_HOLD_SECONDS)

    def view(self) -> ProgramState:
        return ProgramState(
            name=self.program.name,
            state=PUBLIC.get(self.state, self.state),
            pid=self.pid,
            restarts=self.restarts,
            failed_starts=self.failed_starts,
            last_exit=self.last_exit,
            ready=self.ready,
            started=self.spawned_wall if self.pid is not None else None,
            required=self.program.required,
        )


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


def one_line(command: Sequence[str], limit: int = 200) -> str:
    """A command for a log line: one line, and not a whole embedded script."""
    text = " ".join(command).replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."
