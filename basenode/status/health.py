"""The health rules: why a status document is unhealthy, and what it only warns about.

The programs' part is the same with a sync loop or without one: a required program that is FATAL,
or an application that is not running (or not ready yet), is a problem. Each problem starts with a
stable `area: ` (consul, haproxy, sync, templates, programs) that scripts may match.

Only the standard library and config's names: the HEALTHCHECK runs this every few seconds.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from ..config import APP_PROGRAM

CHECK_TIMEOUT = 2.0  # each probe of /health: the agent, the master socket, PID 1


def problems(doc: Dict[str, Any], max_age: float) -> List[str]:
    """Why the document is unhealthy; empty when healthy. Each starts with a stable `area: `."""
    found = []
    consul = doc["consul"]
    if not consul["reachable"] or not consul["leader"] or consul["last_error"]:
        found.append(f"consul: {consul['last_error'] or 'the agent answers but the cluster has no leader'}")
    if doc["haproxy"]["enabled"]:
        program = next((p for p in doc["programs"] or () if p["name"] == "haproxy"), None)
        if program is not None and program["state"] != "running":
            found.append(f"haproxy: the program is {program['state']}")
        elif not doc["haproxy"]["running"]:
            found.append("haproxy: the master socket does not answer")
    sync = doc["sync"]
    if not doc["haproxy"]["enabled"]:
        pass  # the loop runs for templates only: no HAProxy sync to wait for
    elif sync["count"] == 0:
        found.append("sync: no successful sync yet")
    elif sync["confirmed_age"] is not None and sync["confirmed_age"] > max_age:
        found.append(
            f"sync: last confirmed in step {sync['confirmed_age']:.0f} s ago (health_max_age {max_age:g} s)"
        )
    if doc["last_error"]:
        found.append(doc["last_error"])
    for name, template in doc.get("templates", {}).items():
        if template["last_error"]:
            found.append(f"templates: {name}: {template['last_error']}")
    found += program_problems(doc["programs"])
    return found


def warnings(doc: Dict[str, Any]) -> List[str]:
    """What the document reports without failing health."""
    # One bad KV key reaches every node, and must not mark them all unhealthy.
    return [f"routes: {r['key']}: {r['reason']}" for r in doc["routes_refused"]]


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
