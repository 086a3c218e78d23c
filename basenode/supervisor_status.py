"""Status and health from PID 1's programs alone: every mode, a sync loop or not.

The sync loop serves the full status endpoint (status.py). Without one (`--no-haproxy` and no
templates: basenode as a plain supervisor, like tini or supervisord), `basenode status` and
`basenode health` read PID 1's control socket instead, and build the same document with what does
not apply left out: no routes, no templates, `consul`, `sync` and `watch` null, HAProxy not enabled.

The programs' part of health is the same in both: a required program that is FATAL, or an
application that is not running (or not ready yet), is a problem. When PID 1 supervises a sync
loop whose endpoint does not answer, that is a problem too: the client says so rather than
presenting a supervisor-only document for a node that should route.

Only the standard library and control.py: the HEALTHCHECK runs this every few seconds.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from . import __version__
from .config import APP_PROGRAM

SYNC_PROGRAM = "sync"


def program_problems(programs: Optional[Sequence[Dict[str, Any]]]) -> List[str]:
    """Problems of the programs PID 1 reports, each starting `programs: `; [] when it did not answer."""
    found = []
    for p in programs or ():
        if p.get("required") and p["state"] == "fatal":
            found.append(f"programs: required program {p['name']} is FATAL")
        elif p["name"] == APP_PROGRAM and p["state"] != "running":
            found.append(f"programs: the application is {p['state']}, not running")
        elif p["name"] == APP_PROGRAM and p.get("ready") is False:
            found.append("programs: the application runs but is not ready yet")
    return found


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
