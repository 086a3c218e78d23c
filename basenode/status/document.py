"""The status document of a sync loop: what /status answers, and what /health and /metrics are made of.

Built on every request (`collect`) from the sync loop's record (state.SyncState), its watcher, and
probes made now: the agent (leader), HAProxy's master socket and PID 1's control socket.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple

from .. import __version__, control
from ..config import Settings
from . import health
from .health import CHECK_TIMEOUT
from .state import SyncState

if TYPE_CHECKING:
    from .. import watch


def collect(
    settings: Settings,
    state: SyncState,
    watcher: Optional[watch.Watcher],
    now: Optional[float] = None,
) -> Dict[str, Any]:
    """The status document of this sync loop, probing the agent, HAProxy and PID 1 now."""
    from ..output import haproxy
    from ..routes import Discovery

    now = time.time() if now is None else now
    programs = control.programs(settings.state_dir, timeout=CHECK_TIMEOUT)
    sources = watcher.sources() if watcher is not None else []
    totals = Discovery.instance_totals(watcher.data()) if watcher is not None else {}
    reachable, leader, agent_error = probe_agent(settings)
    failing = [s for s in sources if s.failures]
    read_error = "; ".join(f"{s.name} reads failing ({s.failures} in a row): {s.last_error}" for s in failing)
    oks = [s.last_ok for s in sources]
    confirmed = _confirmed(state, oks)
    doc: Dict[str, Any] = {
        "version": __version__,
        "programs": programs,
        "routes": [
            {"service": svc, "port": port, "mode": mode, "healthy": healthy, "total": totals.get(svc, 0)}
            for svc, port, mode, healthy in state.routes
        ],
        "consul": {
            "addr": settings.consul_http.addr,
            "reachable": reachable,
            "leader": leader or None,
            "last_index": max((s.index for s in sources), default=None) or None,
            "errors": sum(s.errors for s in sources),
            "last_error": agent_error or read_error or None,
        },
        "haproxy": {
            "enabled": settings.run_haproxy,
            "running": haproxy.running(settings, settle=0.0) if settings.run_haproxy else False,
        },
        "sync": {
            "count": state.syncs,
            "last_age": _age(now, state.last_sync),
            "confirmed_age": _age(now, confirmed),
            "last_duration": state.last_duration,
            "last_how": state.last_how,
            "last_timestamp": state.last_sync,
            "runtime_applies": state.applies["runtime"],
            "reloads": state.applies["reload"],
            "render_errors": state.render_errors,
            "check_failures": state.check_failures,
            "apply_errors": state.apply_errors,
        },
        "routes_refused": [{"key": k, "reason": why} for k, why in sorted(state.refused_routes.items())],
        "watch": _watch_doc(watcher),
        "last_error": state.last_error,
        "templates": {name: t.doc() for name, t in sorted(state.templates.items())},
    }
    doc["problems"] = health.problems(doc, settings.health_max_age)
    doc["warnings"] = health.warnings(doc)
    doc["healthy"] = not doc["problems"]
    return doc


def _watch_doc(watcher: Optional[watch.Watcher]) -> Optional[Dict[str, Any]]:
    """The dependency engine: what it follows, and what that costs the agent."""
    if watcher is None:
        return None
    counters = watcher.counters
    return {
        "queries": len(watcher.watched()),
        "connections": counters.open,
        "peak_connections": counters.peak_open,
        "max_conns": watcher.max_conns,
        "requests": counters.requests,
        "bytes_received": counters.bytes_received,
        "catalog_watch": sorted(watcher.overflow()),  # services past max_conns, on the catalog watch
    }


def probe_agent(settings: Settings) -> Tuple[bool, Optional[str], Optional[str]]:
    """(answers, leader, error) of the agent basenode reads the catalog from."""
    from .. import consul

    client = consul.make_client(settings.consul_http, timeout=CHECK_TIMEOUT)
    try:
        leader = consul.leader(client)
    except consul.ERRORS as e:
        return False, None, f"cannot read {settings.consul_http.addr}: {type(e).__name__}: {e}"[:300]
    finally:
        # py-consul's client is a reference cycle: left to the garbage collector, its connection
        # stays open until a collection runs, one more socket per scrape in an idle loop.
        client.http.close()
    return True, leader or None, None


def _confirmed(state: SyncState, source_oks: Sequence[Optional[float]]) -> Optional[float]:
    """When HAProxy was last known to run what the catalog says.

    The last apply, or later: every read source answered after it and nothing failed since (a
    blocking read that returns unchanged confirms the applied config is still current)."""
    if state.last_sync is None or state.last_error is not None:
        return state.last_sync
    if source_oks and all(ok is not None for ok in source_oks):
        return max(state.last_sync, min(ok for ok in source_oks if ok is not None))
    return state.last_sync


def _age(now: float, when: Optional[float]) -> Optional[float]:
    return None if when is None else round(max(0.0, now - when), 3)
