"""Leading-edge debounce: an isolated change goes out at once; a burst goes out as one more change.

Changes that follow an emission within `wait_min` are coalesced into one further emission, which waits
for `wait_min` of quiet but never longer than `wait_max` after the first of them. Pure logic on a
clock the caller passes in.
"""

from __future__ import annotations

from typing import Optional


class Debouncer:
    """change(now) -> True: emit now. Otherwise the change is pending, and deadline() says when to
    emit it; call emitted(now) after each emission."""

    def __init__(self, wait_min: float, wait_max: float) -> None:
        self.wait_min = wait_min
        self.wait_max = max(wait_max, wait_min)
        self._last_emit: Optional[float] = None
        self._first_pending: Optional[float] = None
        self._last_change: Optional[float] = None

    def change(self, now: float) -> bool:
        if self._first_pending is None and (
            self._last_emit is None or now - self._last_emit >= self.wait_min
        ):
            return True
        if self._first_pending is None:
            self._first_pending = now
        self._last_change = now
        return False

    def deadline(self) -> Optional[float]:
        if self._first_pending is None or self._last_change is None:
            return None
        return min(self._last_change + self.wait_min, self._first_pending + self.wait_max)

    def due(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def emitted(self, now: float) -> None:
        self._last_emit = now
        self._first_pending = None
        self._last_change = None
