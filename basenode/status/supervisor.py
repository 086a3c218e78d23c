"""The status document from PID 1's programs alone, when it runs no sync loop.

The sync loop serves the full status endpoint (server.py). Without one (`--no-haproxy` and no
templates: basenode as a plain supervisor, like tini or supervisord), `basenode status` and
`basenode health` read PID 1's control socket instead, and build the same document with what does
not apply left out: no routes, no templates, `consul`, `sync` and `watch` null, HAProxy not enabled.

When PID 1 supervises a sync loop whose endpoint does not answer, that is a problem: the client says
so rather than presenting a supervisor-only document for a node that should route.

Only the standard library and health.py: the HEALTHCHECK runs this every few seconds.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from .. import __version__
from .health import program_problems

SYNC_PROGRAM = "sync"


def runs_sync(programs: Optional[Sequence[Dict[str, Any]]]) -> bool:
    return any(p["name"] == SYNC_PROGRAM for p in programs or ())


def document(programs: Sequence[Dict[str, Any]], endpoint_error: Optional[str] = None) -> Dict[str, Any]:
    """The status document of a basenode known only by its programs (see the module docstring).

    `endpoint_error`: PID 1 runs a sync loop, but its endpoint did not answer (why)."""
    problems = []
    if endpoint_error is not None:
        problems.append(f"sync: the status endpoint does not answer: {endpoint_error}")
    problems += program_problems(programs)
    return {
        "version": __version__,
        "healthy": not problems,
        "problems": problems,
        "warnings": [],
        "programs": list(programs),
        "routes": [],
        "routes_refused": [],
        "consul": None,
        "haproxy": {"enabled": False, "running": False},
        "sync": None,
        "watch": None,
        "last_error": None,
        "templates": {},
    }
