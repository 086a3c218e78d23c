"""What the running HAProxy may run when files were written while it did not answer.

A file written while HAProxy does not answer goes unapplied: HAProxy will read it when it starts. But
HAProxy may already have been starting and have read the file a moment before, so once it answers, it
runs one of the texts written since, or the one before them. When they all have one skeleton (parse.py),
only their servers can differ and a runtime apply that compares every backend brings HAProxy to the file;
otherwise only a reload can be sure to.
"""

from __future__ import annotations

from typing import Optional, Set

from .parse import parse_config

LIVE = "live"  # HAProxy runs the live file: apply compares with it
SERVERS = "servers"  # HAProxy runs the live file's skeleton, its servers unknown: compare every backend
UNKNOWN = "unknown"  # HAProxy may run another skeleton: check and reload


class Baseline:
    def __init__(self) -> None:
        self._skeletons: Optional[Set[bytes]] = None  # None: HAProxy runs the live file

    def written(self, before: Optional[str], text: str) -> None:
        """`text` was written while HAProxy did not answer; `before` was the live file until then."""
        if self._skeletons is None:
            self._skeletons = {parse_config(before).skeleton} if before is not None else set()
        self._skeletons.add(parse_config(text).skeleton)

    def confirmed(self) -> None:
        """HAProxy was reloaded, or a runtime apply compared every backend: it runs the live file."""
        self._skeletons = None

    @property
    def unconfirmed(self) -> bool:
        return self._skeletons is not None

    def mode(self, text: str) -> str:
        """How an apply of `text` must treat the live file: LIVE, SERVERS or UNKNOWN."""
        if self._skeletons is None:
            return LIVE
        return SERVERS if self._skeletons <= {parse_config(text).skeleton} else UNKNOWN
