"""The application on basenode's terminal, where tini puts it: its own process group, in the foreground.

When basenode's stdin is a terminal and the application inherits basenode's stdio, the terminal's
signals (Ctrl-C, Ctrl-Z, Ctrl-\\, window size changes) and its reads belong to the application, as
they would with no init at all. So the application runs in a process group of its own, inside
basenode's session, made the terminal's foreground group; basenode and its other programs are in
the background from then on.

A background process that calls tcsetpgrp, or writes to a terminal set to `tostop`, gets SIGTTOU
(SIGTTIN for a read), whose default action stops it: basenode ignores both while it holds the
terminal. An ignored signal stays ignored across exec, so every child puts them back to the default
before it execs (`child_defaults`). The application takes the foreground itself, between fork and
exec (`take_foreground`), so that it is the foreground group before its first instruction runs.
When it exits, basenode gives the foreground back to the group that had it (`give_back`).

Only the standard library: this runs in PID 1, and in the child between fork and exec.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

TTY_SIGNALS = (signal.SIGTTOU, signal.SIGTTIN)


@dataclass
class Terminal:
    """basenode's stdin, a terminal, while the application may hold it."""

    fd: int
    foreground: Optional[int]  # the foreground process group when basenode started (None: unknown)
    previous: Dict[int, Any] = field(default_factory=dict)  # dispositions before basenode ignored them


def claim(fd: int = 0) -> Optional[Terminal]:
    """If `fd` is a terminal: ignore SIGTTOU/SIGTTIN and remember its foreground group. Else None."""
    if not os.isatty(fd):
        return None
    try:
        foreground: Optional[int] = os.tcgetpgrp(fd)
    except OSError:  # a terminal, but not our controlling one
        foreground = None
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in TTY_SIGNALS}
    return Terminal(fd, foreground, previous)


def child_defaults() -> None:
    """In a child, before exec: SIGTTOU/SIGTTIN as a program expects them, not ignored like basenode."""
    for sig in TTY_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


def take_foreground(fd: int = 0) -> None:
    """In the application's child, before exec: its own process group, the terminal's foreground.

    Done here rather than by basenode after the start, so that no instant passes with the
    application in the background (a shell that reads the terminal first would get SIGTTIN). With
    SIGTTOU still ignored (inherited), tcsetpgrp works from the background group it starts in."""
    os.setpgid(0, 0)
    with contextlib.suppress(OSError):  # ENOTTY, ENXIO: a terminal that is not our controlling one
        os.tcsetpgrp(fd, os.getpgrp())
    child_defaults()


def give_back(terminal: Terminal) -> None:
    """The application has exited: the foreground goes back to the group that had it at start."""
    if terminal.foreground is None:
        return
    with contextlib.suppress(OSError):  # the terminal hung up, or is no longer ours
        if os.tcgetpgrp(terminal.fd) != terminal.foreground:
            os.tcsetpgrp(terminal.fd, terminal.foreground)


def release(terminal: Terminal) -> None:
    """basenode is done: the foreground back, and SIGTTOU/SIGTTIN as they were before `claim`."""
    give_back(terminal)
    for sig, handler in terminal.previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
