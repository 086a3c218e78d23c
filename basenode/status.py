"""The status endpoint: /health, /status and /metrics on --status-addr, served by the sync loop.

The sync process knows what matters at 3 a.m. (is Consul answering, did the last render, check and
apply work, when was HAProxy last confirmed in step with the catalog), so it serves the endpoint
from memory: nothing is written to disk on the way, and a full state dir cannot hide a fault.
Program states come from PID 1 over its control socket (control.py).

Every request builds one status document (`collect`); /health is its `healthy` and `problems`,
/metrics is the same facts in Prometheus' text format, /status is the document itself, and
`basenode status --json` prints it. The document's keys are documented in README.md and stable.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from . import __version__, control, supervisor_status
from .config import Settings
from .output.record import OutputRecord

if TYPE_CHECKING:
    from . import httpserve, watch

# The sync loop's side (collect, serve) imports consul, haproxy and routes where it needs them:
# `basenode health`, which a HEALTHCHECK runs every few seconds, only reads a document.

log = logging.getLogger(__name__)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CHECK_TIMEOUT = 2.0  # each probe of /health: the agent, the master socket, PID 1
APPLY_HOWS = ("runtime", "reload", "restart", "written")
# template.loop.TemplateStatus counters that are failures: /metrics kinds, the status table's ERRORS column
TEMPLATE_ERROR_KINDS = (
    "render_errors",
    "plugin_errors",
    "check_failures",
    "reload_failures",
    "output_errors",
)


@dataclass
class SyncState(OutputRecord):
    """What the sync loop did, kept in memory by it (under its lock) and read by the endpoint: the
    record of HAProxy's config as an output (render_errors, check_failures, last_error) and more."""

    started: float = field(default_factory=time.time)
    syncs: int = 0
    last_sync: Optional[float] = None  # wall time of the last successful apply (or unchanged check)
    last_duration: Optional[float] = None
    last_how: Optional[str] = None  # unchanged | runtime | reload | restart | written
    applies: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(APPLY_HOWS, 0))
    apply_errors: int = 0  # last_error: "render: ...", "check: ..." or "apply: ..."; None after a success
    routes: Tuple[Tuple[str, int, str, int], ...] = ()  # (service, port, mode, healthy instances)
    bucket_counts: List[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    duration_sum: float = 0.0
    templates: Dict[str, Any] = field(default_factory=dict)  # name -> template.loop.TemplateStatus
    refused_routes: Dict[str, str] = field(default_factory=dict)  # KV key -> why its route is left out
    applied: Any = None  # explain.Applied: the routes and Consul indexes HAProxy runs (for /explain)

    def observe(self, seconds: float) -> None:
        self.duration_sum += seconds
        for i, bound in enumerate(DURATION_BUCKETS):
            if seconds <= bound:
                self.bucket_counts[i] += 1


# ---------------------------------------------------------------------------------------------
# The status document


def collect(
    settings: Settings,
    state: SyncState,
    watcher: Optional[watch.Watcher],
    now: Optional[float] = None,
) -> Dict[str, Any]:
    """The status document of this sync loop, probing the agent, HAProxy and PID 1 now."""
    from .output import haproxy
    from .routes import Discovery

    now = time.time() if now is None else now
    programs = control.programs(settings.state_dir, timeout=CHECK_TIMEOUT)
    sources = watcher.sources() if watcher is not None else []
    totals = Discovery.instance_totals(watcher.data()) if watcher is not None else {}
    reachable, leader, agent_error = _probe_agent(settings)
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
            "reloads": state.applies["reload"] + state.applies["restart"],
            "render_errors": state.render_errors,
            "check_failures": state.check_failures,
            "apply_errors": state.apply_errors,
        },
        "routes_refused": [{"key": k, "reason": why} for k, why in sorted(state.refused_routes.items())],
        "watch": _watch_doc(watcher),
        "last_error": state.last_error,
        "templates": {name: t.doc() for name, t in sorted(state.templates.items())},
    }
    doc["problems"] = problems(doc, settings.health_max_age)
    # Reported, not failed: one bad KV key reaches every node, and must not mark them all unhealthy.
    doc["warnings"] = [f"routes: {r['key']}: {r['reason']}" for r in doc["routes_refused"]]
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


def _probe_agent(settings: Settings) -> Tuple[bool, Optional[str], Optional[str]]:
    """(answers, leader, error) of the agent basenode reads the catalog from."""
    from . import consul

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
    found += supervisor_status.program_problems(doc["programs"])
    return found


# ---------------------------------------------------------------------------------------------
# Prometheus


def metrics_text(doc: Dict[str, Any], state: SyncState) -> bytes:
    """The document (and the sync duration histogram) in Prometheus' text format."""
    # Imported on the first scrape: a basenode nobody scrapes does not pay for it.
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    def gauge(name: str, doc_text: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc_text, value=value)

    def counter(name: str, doc_text: str, value: float) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc_text, value=value)

    families: List[Any] = [
        gauge("basenode_healthy", "1 when /health passes", 1 if doc["healthy"] else 0),
        counter("basenode_syncs", "successful syncs (applies, including unchanged)", doc["sync"]["count"]),
        counter("basenode_render_errors", "templates that failed to load or render", state.render_errors),
        counter("basenode_check_failures", "rendered configs haproxy -c rejected", state.check_failures),
        counter("basenode_apply_errors", "configs that could not be written or applied", state.apply_errors),
        counter("basenode_consul_errors", "failed Consul queries", doc["consul"]["errors"]),
        # A blocking query to an unreachable server just waits: no error is counted until it times out.
        gauge(
            "basenode_consul_ok",
            "1 when the agent answers, knows a leader and reads work",
            0 if any(p.startswith("consul: ") for p in doc["problems"]) else 1,
        ),
        gauge("basenode_routes", "routes HAProxy serves", len(doc["routes"])),
    ]
    watch_doc = doc.get("watch")
    if watch_doc:
        families += [
            gauge("basenode_watch_queries", "Consul queries followed", watch_doc["queries"]),
            gauge("basenode_watch_connections", "connections open to the agent", watch_doc["connections"]),
            gauge(
                "basenode_watch_catalog_services",
                "services past watch.max_conns, on the catalog-wide watch",
                len(watch_doc["catalog_watch"]),
            ),
            counter("basenode_watch_requests", "requests sent to the agent", watch_doc["requests"]),
            counter(
                "basenode_watch_received_bytes", "bytes read from the agent", watch_doc["bytes_received"]
            ),
        ]
    if state.last_sync is not None:
        families.append(
            gauge("basenode_last_sync_timestamp_seconds", "time of the last successful sync", state.last_sync)
        )
    applies = CounterMetricFamily("basenode_applies", "changes applied, by how", labels=["how"])
    for how in APPLY_HOWS:
        applies.add_metric([how], state.applies[how])
    instances = GaugeMetricFamily("basenode_route_instances", "healthy instances", labels=["service"])
    for route in doc["routes"]:
        instances.add_metric([route["service"]], route["healthy"])
    up = GaugeMetricFamily("basenode_program_up", "1 when the program runs", labels=["program"])
    restarts = CounterMetricFamily("basenode_program_restarts", "restarts of the program", labels=["program"])
    for program in doc["programs"] or ():
        up.add_metric([program["name"]], 1 if program["state"] == "running" else 0)
        restarts.add_metric([program["name"]], program["restarts"])
    # observe() keeps the buckets cumulative already; every sync was observed once.
    buckets = [(repr(bound), count) for bound, count in zip(DURATION_BUCKETS, state.bucket_counts)]
    buckets.append(("+Inf", state.syncs))
    duration = HistogramMetricFamily(
        "basenode_sync_duration_seconds",
        "render + check + apply time of a sync",
        buckets=buckets,
        sum_value=state.duration_sum,
    )
    template_errors = CounterMetricFamily(
        "basenode_template_errors",
        "template renders, plugins, checks and reloads that failed",
        labels=["template", "kind"],
    )
    template_writes = CounterMetricFamily(
        "basenode_template_writes", "destinations written", labels=["template"]
    )
    for name, template in state.templates.items():
        for kind in TEMPLATE_ERROR_KINDS:
            template_errors.add_metric([name, kind], getattr(template, kind))
        template_writes.add_metric([name], template.writes)
    families += [applies, instances, up, restarts, duration, template_errors, template_writes]

    class Collector:
        def collect(self) -> Any:
            return iter(families)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    return generate_latest(registry)


# ---------------------------------------------------------------------------------------------
# The HTTP server (a thread of the sync process)


def respond(
    settings: Settings, state: SyncState, watcher: Optional[watch.Watcher], target: str
) -> Tuple[int, str, bytes]:
    """The answer to GET `target` (path and query): (status code, content type, body)."""
    path = target.split("?", 1)[0]
    if path == "/explain":
        from . import explain

        code, answer = explain.endpoint(settings, state, target)
        return code, "application/json", json.dumps(answer, indent=1, sort_keys=True).encode() + b"\n"
    if path not in ("/health", "/status", "/metrics"):
        return 404, "text/plain; charset=utf-8", b"not found: try /health, /status or /metrics\n"
    try:
        doc = collect(settings, state, watcher)
    except Exception:
        log.exception("status: cannot collect")
        return 500, "text/plain; charset=utf-8", b"internal error; see basenode's log\n"
    if path == "/metrics":
        return 200, "text/plain; version=0.0.4; charset=utf-8", metrics_text(doc, state)
    if path == "/health":
        doc = {"healthy": doc["healthy"], "problems": doc["problems"], "warnings": doc["warnings"]}
    code = 200 if path == "/status" or doc["healthy"] else 503
    return code, "application/json", json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


def serve(
    settings: Settings, state: SyncState, watcher: Optional[watch.Watcher]
) -> Optional[httpserve.BoundedHTTPServer]:
    """Start the endpoint (a reader thread and a few workers, httpserve's bounds); None (logged) when
    its address cannot be bound."""
    from . import httpserve

    host, port = settings.status_addr
    _warn_unless_loopback(host, port)
    try:
        server = httpserve.BoundedHTTPServer(
            (host, port),
            lambda _method, path: respond(settings, state, watcher, path),
            name="basenode-status",
        )
    except OSError as e:
        log.error("status endpoint: cannot listen on %s:%d: %s (routing goes on without it)", host, port, e)
        return None
    server.start()
    log.info("status endpoint on http://%s:%d/ (health, status, metrics)", host, port)
    return server


def _warn_unless_loopback(host: str, port: int) -> None:
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        log.warning(
            "status endpoint on %s:%d is not loopback: anyone who reaches it reads the routes, the programs "
            "and the errors of this node (it changes nothing); bind 127.0.0.1 unless that is meant",
            host,
            port,
        )


# ---------------------------------------------------------------------------------------------
# The commands: `basenode status` and `basenode health` ask a running basenode


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
    them (supervisor_status.py); otherwise the sync loop's endpoint answers, and if it does not,
    the programs say so. OSError or ValueError when neither answers."""
    programs = control.programs(settings.state_dir, timeout=CHECK_TIMEOUT)
    if programs is not None and not supervisor_status.runs_sync(programs):
        doc = supervisor_status.document(programs)
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
            doc = supervisor_status.document(programs, endpoint_error=str(e))
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
