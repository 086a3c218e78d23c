"""`basenode status` and `basenode health`: ask a running basenode, in every mode, and print the answer."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Dict, Optional, Tuple

from .. import control
from ..config import Settings
from . import supervisor
from .health import CHECK_TIMEOUT
from .state import TEMPLATE_ERROR_KINDS


def fetch(settings: Settings, path: str, timeout: float = 10.0) -> Tuple[int, bytes]:
    """GET a path of the running basenode's endpoint: (status code, body). OSError when none answers."""
    host, port = settings.status_addr
    host = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _not_running(settings: Settings, error: BaseException) -> str:
    host, port = settings.status_addr
    socket = control.socket_path(settings.state_dir)
    return (
        f"basenode: no status endpoint answers at {host}:{port} ({error}) and no control socket at "
        f"{socket}; is `basenode run` running?"
    )


def ask(settings: Settings, path: str) -> Tuple[int, Dict[str, Any]]:
    """(HTTP status, document) of the running basenode for /health or /status, in every mode.

    PID 1's control socket first: with no sync loop among its programs, the document is built from
    them (supervisor.py); otherwise the sync loop's endpoint answers, and if it does not,
    the programs say so. OSError or ValueError when neither answers."""
    programs = control.programs(settings.state_dir, timeout=CHECK_TIMEOUT)
    if programs is not None and not supervisor.runs_sync(programs):
        doc = supervisor.document(programs)
    else:
        try:
            code, body = fetch(settings, path)
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise ValueError(f"{path} answered {type(doc).__name__}, not a JSON object")
            return code, doc
        except (OSError, ValueError) as e:
            if programs is None:
                raise
            doc = supervisor.document(programs, endpoint_error=str(e))
    return (200 if doc["healthy"] or path == "/status" else 503), doc


def health_command(settings: Settings) -> int:
    """`basenode health`: 0 when the running basenode is healthy, else 1 and the problems."""
    try:
        code, doc = ask(settings, "/health")
    except (OSError, ValueError) as e:
        print(_not_running(settings, e), file=sys.stderr)
        return 1
    for problem in doc.get("problems", []):
        print(f"unhealthy: {problem}", file=sys.stderr)
    return 0 if code == 200 else 1


def status_command(settings: Settings, as_json: bool = False) -> int:
    """`basenode status [--json]`: the running basenode's status document, as JSON or as a table."""
    try:
        _, doc = ask(settings, "/status")
    except (OSError, ValueError) as e:
        print(_not_running(settings, e), file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(format_table(doc), end="")
    return 0 if doc.get("healthy") else 1


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def format_table(doc: Dict[str, Any]) -> str:
    """The human form of the status document: aligned, under 100 columns."""
    lines = [f"basenode {doc['version']}: {'healthy' if doc['healthy'] else 'UNHEALTHY'}"]
    lines += [f"  problem: {p}"[:99] for p in doc["problems"]]
    lines.append("")
    lines.append(f"{'PROGRAM':<20} {'STATE':<9} {'PID':>7} {'UPTIME':>8} {'RESTARTS':>8} {'LAST EXIT':>9}")
    for p in doc["programs"] or ():
        last_exit = "-" if p["last_exit"] is None else str(p["last_exit"])
        lines.append(
            f"{p['name'][:20]:<20} {p['state']:<9} {p['pid'] or '-':>7} {_duration(p['uptime']):>8} "
            f"{p['restarts']:>8} {last_exit:>9}"
        )
    if doc["programs"] is None:
        lines.append("(PID 1's control socket does not answer: program states unknown)")
    if doc.get("sync") is not None or doc["routes"]:
        lines.append("")
        lines.append(f"{'ROUTE':<40} {'PORT':>5} {'MODE':<4} {'HEALTHY':>7} {'TOTAL':>5}")
    for r in doc["routes"]:
        lines.append(
            f"{r['service'][:40]:<40} {r['port']:>5} {r['mode']:<4} {r['healthy']:>7} {r['total']:>5}"
        )
    templates = doc.get("templates") or {}
    if templates:
        lines.append("")
        lines.append(f"{'TEMPLATE':<20} {'WRITES':>6} {'ERRORS':>6} {'LAST WRITE':>10}  DESTINATION")
        now = time.time()
        for name, t in templates.items():
            errors = sum(t.get(kind, 0) for kind in TEMPLATE_ERROR_KINDS)  # an older basenode: fewer kinds
            age = f"{_duration(now - t['last_write'])} ago" if t["last_write"] else "-"
            lines.append(f"{name[:20]:<20} {t['writes']:>6} {errors:>6} {age:>10}  {t['destination']}")
    c, s = doc.get("consul"), doc.get("sync")
    lines.append("")
    if c is not None:
        agent = "reachable" if c["reachable"] else "NOT reachable"
        lines.append(
            f"consul   {c['addr']}: agent {agent}, leader {c['leader'] or 'unknown'}, "
            f"index {c['last_index'] or '-'}, errors {c['errors']}"
        )
    if s is not None:
        how = s["last_how"] or "-"
        lines.append(
            f"sync     {s['count']} syncs, last {_duration(s['last_age'])} ago via {how} "
            f"in {_duration(s['last_duration'])}, confirmed {_duration(s['confirmed_age'])} ago"
        )
        lines.append(
            f"         runtime applies {s['runtime_applies']}, reloads {s['reloads']}, render errors "
            f"{s['render_errors']}, check failures {s['check_failures']}, apply errors {s['apply_errors']}"
        )
    if c is None and s is None:
        lines.append("supervisor only: no sync loop, so no routes, Consul or sync status")
    lines.append(f"last error: {doc['last_error'] or '-'}"[:99])
    return "\n".join(line.rstrip()[:99] for line in lines) + "\n"
