"""Consul's (Go's) duration syntax, as its `wait` parameter takes it: 5m, 30s, 1m30s, 500ms."""

from __future__ import annotations

import re

_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_WAIT = 600.0  # Consul caps `wait` at 10 minutes


def parse_duration(text: str) -> float:
    """'1m30s' -> 90.0 seconds (> 0), uncapped. Raises ValueError."""
    text = text.strip() if isinstance(text, str) else ""
    position, total = 0, 0.0
    for match in _DURATION_PART_RE.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if not text or position != len(text) or total <= 0:
        raise ValueError(f"expected a duration like 5m or 30s, got {text!r}")
    return total


def parse_wait(text: str) -> float:
    """'5m' -> 300.0, capped at 10 minutes as Consul caps it. Raises ValueError."""
    return min(parse_duration(text), MAX_WAIT)


def format_wait(seconds: float) -> str:
    return f"{max(1, int(seconds))}s" if seconds >= 1 else f"{max(1, int(seconds * 1000))}ms"
