"""One dependency's blocking query, repeated by Consul's rules (consul-template's view).

Consul's rules, as its documentation gives them: the index is reset to 0 when it goes backwards, and
never sent as 0 after a response (at least 1); after a failed read the next read is a plain one
(index 0), since a restarted agent may be behind the old index and would hold the read; `wait` gets
jitter (we ask for up to wait/16 less, Consul adds up to wait/16 more); a read that comes back at once
with an unmoved index is rate-limited; errors back off exponentially with full jitter.

A failed read is "unknown", never "empty": the last good value stays until a read succeeds.
With a poll interval (the queries past the connection budget, see watcher.py) the read is a plain
one every interval, holding no connection between reads.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Optional, Set, Tuple

from .. import durations

log = logging.getLogger("basenode.watch")

BACKOFF_INITIAL = 0.25  # seconds; doubles per failed read in a row, full jitter
BACKOFF_MAX = 10.0
QUICK_RETURN = 1.0  # a blocking read back sooner than this with the same index is Consul misbehaving

# read(index, wait, wait_seconds) -> (new index, value, warnings)
Read = Callable[[int, Optional[str], Optional[float]], Awaitable[Tuple[int, Any, Iterable[str]]]]


@dataclass
class SourceStatus:
    """What one read loop knows, for status output and tests."""

    name: str
    index: int = 0
    failures: int = 0  # in a row; 0 once a read works again
    last_error: str = ""
    reads: int = 0
    errors: int = 0  # failed reads since start
    last_ok: Optional[float] = None  # wall-clock time of the last read that worked


@dataclass(frozen=True)
class Pacing:
    """How a read loop waits: Consul's `wait`, the randomness for jitter, the clock; poll_interval set
    means a plain read every interval instead of a blocking query."""

    wait_seconds: float
    rng: random.Random
    clock: Callable[[], float] = time.monotonic
    poll_interval: Optional[float] = None

    def jittered_wait(self) -> float:
        # Consul adds up to wait/16 itself; asking for up to wait/16 less spreads clients started together.
        return self.wait_seconds * (1.0 - self.rng.random() / 16)


def backoff_delay(failures: int, rng: random.Random) -> float:
    """Full jitter: uniform in (0, min(max, initial * 2^(failures-1))]."""
    ceiling = min(BACKOFF_MAX, BACKOFF_INITIAL * (2 ** min(max(failures - 1, 0), 16)))
    return ceiling * (1.0 - rng.random())


class WarnOnce:
    """Logs each distinct warning once while it persists; one that goes away and comes back is logged anew."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self._active: Set[str] = set()
        self._log = logger

    def report(self, warnings: Iterable[str]) -> None:
        current = set(warnings)
        for text in sorted(current - self._active):
            self._log.warning("%s", text)
        self._active = current


def read_failed(status: SourceStatus, error: BaseException) -> None:
    """Count and log a failed read (once per run of failures)."""
    status.failures += 1
    status.errors += 1
    status.last_error = f"{type(error).__name__}: {error}"[:300]
    if status.failures == 1:
        log.warning("consul %s read failed, keeping the last good state: %s", status.name, status.last_error)
    else:
        log.debug("consul %s read failed (%d in a row): %s", status.name, status.failures, status.last_error)


def read_recovered(status: SourceStatus) -> None:
    if status.failures:
        log.info("consul %s read works again after %d failed reads", status.name, status.failures)
    status.failures = 0
    status.last_error = ""
    status.last_ok = time.time()


async def follow(
    read: Read,
    store: Callable[[Any], None],
    status: SourceStatus,
    pacing: Pacing,
    errors: Tuple[type, ...],
) -> None:
    """Read, store, block on the new index, forever (the caller cancels the task to stop it).

    `store(value)` keeps a value that may equal the last one (the store decides what changed).
    `errors` are the failures of a read; anything else is a bug, logged with its traceback and
    treated as a failed read, so that it cannot silently freeze routing.
    """
    warn = WarnOnce()
    index = 0
    while True:
        started = pacing.clock()
        polling = pacing.poll_interval is not None
        seconds = pacing.jittered_wait() if index and not polling else None
        wait = durations.format_wait(seconds) if seconds else None
        try:
            new_index, value, warnings = await read(0 if polling else index, wait, seconds)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if not isinstance(e, errors):
                log.exception("consul %s read: unexpected error", status.name)
            read_failed(status, e)
            await asyncio.sleep(backoff_delay(status.failures, pacing.rng))
            index = 0  # see the module docstring: the agent may be behind the old index now
            continue
        status.reads += 1
        read_recovered(status)
        warn.report(warnings)
        store(value)
        if polling:
            await asyncio.sleep(pacing.poll_interval or 0)
            continue
        new_index = max(new_index, 1)  # Consul's rule: 0 is never a valid index to block on
        if new_index < index:
            log.debug("consul %s index went back from %d to %d: reset", status.name, index, new_index)
            index = 0
        elif index and new_index == index and pacing.clock() - started < QUICK_RETURN:
            # Unmoved index, yet no wait: do not spin; pace it like a failed read.
            await asyncio.sleep(backoff_delay(1, pacing.rng))
            index = new_index
        else:
            index = new_index
        status.index = index
