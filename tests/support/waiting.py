"""Polling with a deadline: tests wait for behaviour, they never sleep a fixed time and hope."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def eventually(probe: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> T:
    """Call probe until it is truthy; after `timeout`, AssertionError naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: T = probe()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or probe!r}; last value {last!r}"
            )
        time.sleep(interval)
        last = probe()
    return last
