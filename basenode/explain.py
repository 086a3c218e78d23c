"""`basenode explain SERVICE` and `/explain?service=`: why an instance gets traffic from this node, or not.

For every instance Consul knows of the service (every check state, every datacenter), the rules that
decide routing are applied again by the very functions that decide it (health_service.judge: peer,
validation, checks; health_service.carries: the route's tag filter; the datacenter the health read
covers), and the instances that pass them are matched with HAProxy's runtime state of their server
(UP, DOWN, MAINT, DRAIN, sessions, weight). `explain(answers)` is the pure part: the answers read
from Consul, the sync loop and HAProxy in, the document out (its keys are documented in README.md).
`endpoint` gathers the answers inside the sync process, which knows what it applied.
"""

from __future__ import annotations

import functools
import json
import sys
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .config import SERVICE_NAME_RE, Route, Settings
from .dependency import SERVICE, Query
from .dependency.health_service import carries, judge, other_datacenter
from .snapshot import SAFE_TOKEN_RE, Snapshot, show

MAINTENANCE_CHECKS = ("_service_maintenance", "_node_maintenance")  # Consul's maintenance mode


class Applied:
    """What HAProxy runs, as the sync loop last applied it: the routes, and per routed service the
    X-Consul-Index of the read its instances came from (read before the data: never newer).

    The sync loop records one on every change; at 1,000 routes working both out each time would cost
    more than the change. Made with applied(), they are worked out when /explain first asks."""

    def __init__(self, routes: Sequence[Route] = (), indexes: Optional[Mapping[str, int]] = None) -> None:
        self._source: Tuple[Optional[Snapshot], Mapping[Query, int]] = (None, {})
        if routes or indexes:
            self.__dict__.update(routes=tuple(routes), indexes=dict(indexes or {}))

    @functools.cached_property
    def routes(self) -> Tuple[Route, ...]:
        snapshot = self._source[0]
        return tuple(state.route for state in snapshot.routes) if snapshot is not None else ()

    @functools.cached_property
    def indexes(self) -> Mapping[str, int]:
        watched = self._source[1]
        found = ((r.service, watched.get(Query(SERVICE, r.service))) for r in self.routes)
        return {name: index for name, index in found if index}


def applied(snapshot: Snapshot, indexes: Mapping[Query, int]) -> Applied:
    made = Applied()
    made._source = (snapshot, indexes)
    return made


@dataclass(frozen=True)
class Server:
    """One server of the route's backend as HAProxy runs it now."""

    name: str
    state: str  # UP, DOWN, MAINT, DRAIN, STARTING, STOPPING
    weight: int
    sessions: Optional[int]  # current sessions (show stat's scur); None when show stat did not say


@dataclass(frozen=True)
class Answers:
    service: str
    datacenter: str  # this node's (its agent's)
    entries: Sequence[Any]  # /v1/health/service/<service>, every state, this datacenter
    agent_index: Optional[int]  # that read's X-Consul-Index: the agent's latest
    remote: Mapping[str, Sequence[Any]] = field(default_factory=dict)  # other datacenter -> entries
    remote_errors: Mapping[str, str] = field(default_factory=dict)  # other datacenter -> why unread
    agent_only: Sequence[Any] = ()  # /v1/agent/services entries of this service not in the catalog (yet)
    applied: Optional[Applied] = None  # None: the sync loop applied nothing yet
    refused_routes: Mapping[str, str] = field(default_factory=dict)  # KV key -> why left out
    configured: Sequence[Route] = ()  # routes from flags, environment and file
    include_warning: bool = False
    servers: Optional[Mapping[str, Server]] = None  # the backend's servers; None: HAProxy not read
    haproxy_error: Optional[str] = None
    last_error: Optional[str] = None  # the sync loop's last failure, if any


def _reason(code: str, detail: str) -> Dict[str, str]:
    return {"code": code, "detail": detail}


def _shown(value: Any) -> Optional[str]:
    """An identity (ID, node name) as it may be shown: only when it is a safe token."""
    return value if isinstance(value, str) and SAFE_TOKEN_RE.match(value) else None


def _check_reasons(refused: Sequence[Any]) -> List[Dict[str, str]]:
    reasons = []
    for check in refused:
        if not isinstance(check, Mapping):
            reasons.append(_reason("check-failing", "its checks are not in Consul's documented shape"))
            continue
        check_id, status = check.get("CheckID"), check.get("Status")
        if isinstance(check_id, str) and check_id.startswith(MAINTENANCE_CHECKS):
            reasons.append(_reason("maintenance", f"in maintenance mode (check {show(check_id)})"))
        elif status == "warning":
            reasons.append(
                _reason(
                    "check-warning",
                    f"check {show(check_id)} is warning (routes take passing only; include_warning "
                    "admits warning)",
                )
            )
        else:
            reasons.append(_reason("check-failing", f"check {show(check_id)} is {show(status)}"))
    return reasons


def _checks_doc(entry: Mapping[str, Any]) -> List[Dict[str, Any]]:
    checks = entry.get("Checks")
    if not isinstance(checks, list):
        return []
    return [
        {
            "id": _shown(c.get("CheckID")),
            "name": str(c.get("Name"))[:100],
            "status": str(c.get("Status"))[:20],
            "output": str(c.get("Output") or "")[:200],
        }
        for c in checks
        if isinstance(c, Mapping)
    ]


def _server_doc(server: Server) -> Dict[str, Any]:
    return {
        "server": server.name,
        "state": server.state,
        "weight": server.weight,
        "sessions": server.sessions,
    }


def _runtime(
    server: Optional[Server], answers: Answers, rules_pass: bool
) -> Tuple[Optional[bool], List[Dict[str, str]]]:
    """(HAProxy sends the instance new traffic now, why not or why it should not); None: unknown."""
    if answers.servers is None:
        why = answers.haproxy_error or "HAProxy's stats socket was not read"
        return None, [_reason("haproxy-unknown", f"HAProxy's runtime state is unknown: {why}")]
    if server is None:
        if not rules_pass:
            return False, []
        pending = (
            f"the sync loop's last attempt failed: {answers.last_error}"
            if answers.last_error
            else "a change the sync loop has not applied yet"
        )
        return False, [
            _reason("not-applied", f"passes every rule but HAProxy has no server for it ({pending})")
        ]
    if server.state == "MAINT":
        return False, [_reason("maint", f"HAProxy holds server {server.name} in maintenance")]
    if server.state == "DRAIN":
        return False, [_reason("draining", f"HAProxy is draining server {server.name}: no new traffic")]
    if server.state != "UP":
        return False, [_reason("haproxy-down", f"HAProxy has server {server.name} {server.state}")]
    if server.weight == 0:
        return False, [] if not rules_pass else [
            _reason("weight-0", f"HAProxy runs {server.name} at weight 0")
        ]
    if not rules_pass:
        return True, [_reason("not-applied", "HAProxy still sends it traffic: the change is not applied yet")]
    return True, []


def _route(answers: Answers) -> Tuple[Optional[Route], List[Dict[str, str]]]:
    """The route this node serves the service on, or why there is none."""
    routes = answers.applied.routes if answers.applied is not None else ()
    for route in routes:
        if route.service == answers.service:
            return route, []
    key = f"basenode/routes/{answers.service}"
    if key in answers.refused_routes:
        return None, [
            _reason("route-refused", f"the KV route {key} is left out: {answers.refused_routes[key]}")
        ]
    if answers.applied is None and any(r.service == answers.service for r in answers.configured):
        return None, [_reason("not-applied", "the route is configured but the sync loop applied nothing yet")]
    served = ", ".join(sorted(r.service for r in routes)) or "none"
    return None, [
        _reason(
            "no-route",
            f"this node has no route for {answers.service} (routes: {served}; add one with --routes, "
            f"[routes.{answers.service}] or the KV key {key})",
        )
    ]


def _instance_doc(
    entry: Any, datacenter: str, answers: Answers, route: Optional[Route], route_reasons: List[Dict[str, str]]
) -> Dict[str, Any]:
    entry = entry if isinstance(entry, Mapping) else {}
    node = entry.get("Node") if isinstance(entry.get("Node"), Mapping) else {}
    service = entry.get("Service") if isinstance(entry.get("Service"), Mapping) else {}
    doc: Dict[str, Any] = {
        "id": _shown(service.get("ID")),
        "node": _shown(node.get("Node")),
        "datacenter": datacenter,
        "address": None,
        "port": None,
        "weight": None,
        "tags": [],
        "checks": _checks_doc(entry),
        "haproxy": None,
    }
    reasons: List[Dict[str, str]] = []
    other = other_datacenter(entry, datacenter, answers.datacenter)
    if other:
        reasons.append(_reason("datacenter", other))
    verdict = judge(entry, answers.include_warning)
    if verdict.peer:
        reasons.append(_reason("peer", "imported from a peer cluster: never routed locally"))
    elif verdict.instance is None:
        rejected = verdict.rejected
        what = f"{rejected.field} {rejected.problem}" if rejected is not None else "invalid"
        reasons.append(_reason("invalid", f"failed validation: {what}; routing drops the instance"))
    instance = verdict.instance
    if instance is not None:
        doc.update(
            address=instance.address, port=instance.port, weight=instance.weight, tags=list(instance.tags)
        )
    reasons += route_reasons
    reasons += _check_reasons(verdict.refused)
    routed: Optional[bool] = False
    if instance is not None:
        doc["server"] = instance.key
        if route is not None and not carries(instance, route.tag):
            reasons.append(_reason("tag", f"does not carry the tag {route.tag!r} the route filters on"))
        if instance.weight == 0:
            reasons.append(
                _reason("weight-0", "weight 0 (its Weights.Passing): HAProxy sends it no new traffic")
            )
        if route is not None and not other:
            server = (answers.servers or {}).get(instance.key)
            doc["haproxy"] = _server_doc(server) if server is not None else None
            routed, runtime_reasons = _runtime(server, answers, rules_pass=not reasons)
            reasons += runtime_reasons
    doc["routed"] = routed
    doc["reasons"] = reasons
    return doc


def _leftover_doc(server: Server) -> Dict[str, Any]:
    """A server HAProxy still has whose instance routing no longer takes (deregistered, failing...)."""
    doc = _server_doc(server)
    if server.state == "MAINT" and server.sessions:
        doc["reason"] = _reason(
            "draining",
            f"no longer routed: HAProxy keeps it in maintenance, no new traffic, until its {server.sessions} "
            "open sessions end",
        )
    elif server.state == "MAINT":
        doc["reason"] = _reason("maint", "no longer routed: in maintenance, deleted at the next apply")
    else:
        doc["reason"] = _reason("not-applied", "no longer routed: a change the sync loop has not applied yet")
    return doc


def _agent_only_doc(service: Any) -> Dict[str, Any]:
    """A registration this node's agent holds that the catalog does not show: nobody routes it yet."""
    ident = _shown(service.get("ID")) if isinstance(service, Mapping) else None
    detail = (
        "registered with this node's agent but not in the catalog: the agent's sync to the servers "
        "is pending or failing (see the agent's log)"
    )
    return {"id": ident, "reason": _reason("not-in-catalog", detail)}


def explain(answers: Answers) -> Dict[str, Any]:
    """The answers -> the explanation document (README.md, `basenode explain --json`)."""
    route, route_reasons = _route(answers)
    instances = [_instance_doc(e, answers.datacenter, answers, route, route_reasons) for e in answers.entries]
    for datacenter in sorted(answers.remote):
        instances += [
            _instance_doc(e, datacenter, answers, route, route_reasons) for e in answers.remote[datacenter]
        ]
    known = {d.get("server") for d in instances if d["datacenter"] == answers.datacenter}
    leftovers = [
        _leftover_doc(s) for name, s in sorted((answers.servers or {}).items()) if route and name not in known
    ]
    applied_index = answers.applied.indexes.get(answers.service) if answers.applied is not None else None
    return {
        "service": answers.service,
        "datacenter": answers.datacenter,
        "route": None
        if route is None
        else {"port": route.port, "mode": route.mode, "tag": route.tag, "source": route.source or "settings"},
        "route_reasons": route_reasons,
        "consul": {
            "applied_index": applied_index,
            "agent_index": answers.agent_index,
            "in_step": applied_index is not None and applied_index == answers.agent_index,
            "unread_datacenters": [
                {"datacenter": dc, "error": e} for dc, e in sorted(answers.remote_errors.items())
            ],
        },
        "haproxy": {"read": answers.servers is not None, "error": answers.haproxy_error},
        "instances": instances,
        "routed": sum(1 for d in instances if d["routed"]),  # instances HAProxy sends new traffic to
        "haproxy_only": leftovers,
        "agent_only": [_agent_only_doc(s) for s in answers.agent_only],
    }


def endpoint(settings: Settings, sync_state: Any, request_path: str) -> Tuple[int, Dict[str, Any]]:
    """GET /explain?service=NAME: (HTTP status, document); 400 for a bad name, 503 when Consul cannot
    be read. `sync_state` is the sync loop's status.state.SyncState (its `applied`, `refused_routes`)."""
    from . import consul

    query = urllib.parse.parse_qs(urllib.parse.urlsplit(request_path).query)
    service = (query.get("service") or [""])[0]
    if not SERVICE_NAME_RE.match(service):
        return 400, {"error": "explain: give ?service=NAME, a service name ([A-Za-z0-9._-]{1,128})"}
    from .explain_answers import gather

    try:
        answers = gather(settings, service, sync_state)
    except consul.ERRORS as e:
        return 503, {
            "error": f"explain: cannot read Consul at {settings.consul_http.addr}: {type(e).__name__}"
        }
    return 200, explain(answers)


# --- `basenode explain SERVICE [--json]`: ask the running basenode -------------------------------------


def command(settings: Settings, service: str, as_json: bool = False) -> int:
    """0 with the explanation printed; 1 when no basenode answers or it could not explain."""
    from .status.commands import fetch

    try:
        code, body = fetch(settings, "/explain?" + urllib.parse.urlencode({"service": service}))
        doc = json.loads(body)
    except (OSError, ValueError) as e:
        host, port = settings.status_addr
        print(
            f"basenode: no status endpoint answers at {host}:{port} ({e}); is `basenode run` running?",
            file=sys.stderr,
        )
        return 1
    if code != 200:
        print(f"basenode: {doc.get('error') if isinstance(doc, dict) else body[:200]!r}", file=sys.stderr)
        return 1
    print(
        json.dumps(doc, indent=2, sort_keys=True) if as_json else format_table(doc),
        end="\n" if as_json else "",
    )
    return 0


def _row(*cells: Any) -> str:
    ident, node, datacenter, where, state, sessions, why = ("-" if c is None else str(c) for c in cells)
    return f"{ident:<24.24} {node:<16.16} {datacenter:<6.6} {where:<22.22} {state:<8.8} {sessions:>4}  {why}"


def format_table(doc: Dict[str, Any]) -> str:
    """The human form of the document: one line per instance, what it gets and why."""
    route, index = doc["route"], doc["consul"]
    where = "no route on this node"
    if route is not None:
        where = f"route :{route['port']} {route['mode']}, tag {route['tag'] or '-'}, from {route['source']}"
    step = "in step" if index["in_step"] else "NOT in step"
    applied_index, agent_index = index["applied_index"] or "-", index["agent_index"] or "-"
    lines = [
        f"{doc['service']} ({doc['datacenter']}): {where}",
        f"consul index: applied {applied_index}, agent {agent_index} ({step})",
        f"{doc['routed']} of {len(doc['instances'])} instances get traffic from this node",
        *(f"  {r['detail']}" for r in doc["route_reasons"]),
        *([f"haproxy: {doc['haproxy']['error']}"] if doc["haproxy"]["error"] else []),
        "",
        _row("INSTANCE", "NODE", "DC", "ADDRESS", "HAPROXY", "SESS", "WHY"),
    ]
    for d in doc["instances"]:
        server = d["haproxy"] or {}
        why = [r["detail"] for r in d["reasons"] if r["code"] != "no-route"]
        verdict = "routed" if d["routed"] else "not routed"
        where = f"{d['address']}:{d['port']}" if d["address"] else None
        row = (d["id"], d["node"], d["datacenter"], where, server.get("state"), server.get("sessions"))
        lines.append(_row(*row, "; ".join([verdict, *why])))
    for d in doc["agent_only"]:
        lines.append(_row(d["id"], "(this agent)", "", None, None, None, d["reason"]["detail"]))
    for d in doc["haproxy_only"]:
        row = ("(not in Consul)", "", "", d["server"], d["state"], d["sessions"])
        lines.append(_row(*row, d["reason"]["detail"]))
    return "\n".join(line.rstrip() for line in lines) + "\n"
