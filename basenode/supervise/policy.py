"""The supervisor's rules, as pure functions: restart backoff, and when depends_on lets a program start."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .. import config
from .process import EXITED, FATAL, RUNNING, Proc


def _random_fraction() -> float:
    """Uniform in [0, 1): enough for jitter, without importing `random` (PID 1 memory)."""
    return int.from_bytes(os.urandom(7), "big") / (1 << 56)


def backoff_delay(
    attempt: int, initial: float, maximum: float, rand: Callable[[], float] = _random_fraction
) -> float:
    """Delay before the `attempt`-th restart in a row (1-based): initial * 2**(attempt-1), capped at
    maximum, minus up to 20 % jitter. initial <= 0 means restart at once."""
    if initial <= 0 or attempt < 1:
        return 0.0
    base = min(maximum, initial * 2 ** min(attempt - 1, 62))
    return base * (1.0 - 0.2 * rand())


def unresolvable(programs: Sequence[config.Program]) -> Dict[str, str]:
    """Programs that can never start because of themselves -> why: a dependency that does not exist,
    or a cycle through depends_on. (Programs behind them go FATAL in turn when the loop runs.)"""
    deps = {p.name: p.depends_on for p in programs}
    bad: Dict[str, str] = {}
    for p in programs:
        unknown = [d for d in p.depends_on if d not in deps]
        if unknown:
            bad[p.name] = f"depends on unknown program {unknown[0]!r}"
        else:
            cycle = _cycle_through(p.name, deps)
            if cycle:
                bad[p.name] = "depends_on has a cycle: " + " -> ".join(cycle)
    return bad


def _cycle_through(start: str, deps: Dict[str, Tuple[str, ...]]) -> Optional[List[str]]:
    """A path of depends_on from `start` back to itself, or None."""
    stack = [[start]]
    seen = set()
    while stack:
        path = stack.pop()
        for d in deps.get(path[-1], ()):
            if d == start:
                return [*path, d]
            if d not in seen:
                seen.add(d)
                stack.append([*path, d])
    return None


def dependencies_up(p: Proc, procs: Mapping[str, Proc]) -> bool:
    """Every program in its depends_on is up and ready, or finished with status 0."""
    for name in p.program.depends_on:
        d = procs.get(name)
        if d is None:  # removed by a reload: nothing to wait for
            continue
        if not ((d.state == RUNNING and d.ready) or (d.state == EXITED and d.last_exit == 0)):
            return False
    return True


def dependency_failed(p: Proc, procs: Mapping[str, Proc]) -> Optional[str]:
    """Why it can never start, when a program in its depends_on is FATAL or failed."""
    for name in p.program.depends_on:
        d = procs.get(name)
        if d is None:
            continue
        if d.state == FATAL:
            return f"dependency {name!r} is FATAL"
        if d.state == EXITED and d.last_exit != 0:
            return f"dependency {name!r} exited with status {d.last_exit}"
    return None


def only_order_differs(a: config.Program, b: config.Program) -> bool:
    """The two definitions differ in depends_on alone (a running program need not restart for it)."""
    return dataclasses.replace(a, depends_on=b.depends_on) == b
