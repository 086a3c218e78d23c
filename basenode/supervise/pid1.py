"""PID 1's signal dispositions, and orphans that come to basenode when it is not PID 1."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any, Callable, Dict, Iterable

from .. import config

log = logging.getLogger(__package__)  # one component, "supervise", for the whole supervisor

PR_SET_CHILD_SUBREAPER = 36

# Signals basenode always catches: stops, SIGCHLD, and the usual forwarded ones (even with no program
# to forward them to, a SIGHUP must not kill PID 1 by its default action).
_CAUGHT = (signal.SIGCHLD, *config.STOP_SIGNALS, *config.FORWARDED_SIGNALS)
# Never touched: uncatchable, or reset for children by Popen(restore_signals=True).
_UNTOUCHED = {signal.SIGKILL, signal.SIGSTOP, signal.SIGPIPE, getattr(signal, "SIGXFSZ", signal.SIGPIPE)}


def _ignore(signum: int, frame: object) -> None:
    """Stands in for SIG_IGN: a caught signal reverts to the default in exec'd children."""


def catch_signals(handler: Callable[[int, Any], None], forwarded: Iterable[int]) -> Dict[int, Any]:
    """`handler` for the stop signals, SIGCHLD and every signal in `forwarded`; a no-op handler for
    signals basenode inherited as ignored, so that its children start with default dispositions.
    Returns the dispositions replaced, for restore_signals."""
    caught = set(_CAUGHT)
    caught.update(forwarded)
    caught -= {signal.SIGKILL, signal.SIGSTOP}
    old_handlers = {}
    for sig in caught:
        old_handlers[sig] = signal.signal(sig, handler)
    for sig in signal.valid_signals():
        if sig in caught or sig in _UNTOUCHED:
            continue
        try:
            if signal.getsignal(sig) == signal.SIG_IGN:
                old_handlers[sig] = signal.signal(sig, _ignore)
        except (OSError, ValueError, RuntimeError):
            pass  # signals the C library reserves for itself
    return old_handlers


def restore_signals(old_handlers: Dict[int, Any]) -> None:
    for sig, handler in old_handlers.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def become_subreaper() -> None:
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
