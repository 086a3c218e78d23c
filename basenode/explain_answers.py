"""The answers `basenode explain` works from, read now inside the sync process: Consul's every instance
of the service (every check state, then every other datacenter), what the sync loop applied, and
HAProxy's runtime state of the route's backend (`show servers state`, `show stat`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from .config import Settings
from .explain import Answers, Server
from .output.haproxy.runtime import ADMIN_CMAINT, ADMIN_FDRAIN, ADMIN_FMAINT, ADMIN_RMAINT

READ_TIMEOUT = 5.0  # each read of the agent
SERVER_STATES = {0: "DOWN", 1: "STARTING", 2: "UP", 3: "STOPPING"}  # show servers state's srv_op_state
ADMIN_MAINT = ADMIN_FMAINT | ADMIN_CMAINT | ADMIN_RMAINT  # forced, from the config, no address


def server_state(op_state: int, admin_state: int) -> str:
    """`show servers state`'s numbers as the words HAProxy's stats page uses."""
    if admin_state & ADMIN_MAINT:
        return "MAINT"
    if admin_state & ADMIN_FDRAIN:
        return "DRAIN"
    return SERVER_STATES.get(op_state, f"op_state {op_state}")


def sessions_from_stat(csv_text: str, backend: str) -> Dict[str, int]:
    """server -> current sessions, from `show stat` (CSV, its header line starting `# `)."""
    lines = csv_text.splitlines()
    if not lines or not lines[0].startswith("# "):
        return {}
    columns = lines[0][2:].split(",")
    found = {}
    for line in lines[1:]:
        row = dict(zip(columns, line.split(",")))
        if row.get("pxname") == backend and row.get("svname") not in (None, "BACKEND", "FRONTEND"):
            try:
                found[row["svname"]] = int(row.get("scur") or 0)
            except ValueError:
                continue
    return found


def read_servers(socket_path: Path, backend: str) -> Dict[str, Server]:
    """The backend's servers as HAProxy runs them. haproxy.RuntimeAPIError when it does not answer."""
    from .output import haproxy
    from .output.haproxy import runtime

    states = haproxy.show_servers_state(socket_path, backend).get(backend, {})
    # Every proxy's servers: by name, `show stat` finds the route's frontend, which has the same name.
    sessions = sessions_from_stat(runtime.command(socket_path, ("show", "stat", "-1", "4", "-1")), backend)
    return {
        name: Server(name, server_state(s.op_state, s.admin_state), s.weight, sessions.get(name))
        for name, s in states.items()
    }


def _ids(entry: Any) -> Any:
    """(node name, service ID) of a health entry."""
    node, service = (entry.get(k) if isinstance(entry, dict) else None for k in ("Node", "Service"))
    return (
        node.get("Node") if isinstance(node, dict) else None,
        service.get("ID") if isinstance(service, dict) else None,
    )


def gather(settings: Settings, service: str, sync_state: Any) -> Answers:
    """Read Consul (this datacenter with every check state, then the others, and this node's agent for
    what it has that the catalog has not) and HAProxy now.
    consul.ERRORS when the agent cannot be read."""
    from . import consul
    from .output import haproxy

    client = consul.make_client(settings.consul_http, timeout=READ_TIMEOUT)
    remote: Dict[str, Any] = {}
    remote_errors: Dict[str, str] = {}
    try:
        agent = client.agent.self()["Config"]
        datacenter, node = str(agent["Datacenter"]), str(agent["NodeName"])
        index, entries = client.health.service(service)
        in_catalog = {_ids(e) for e in entries or ()}
        local = [
            s
            for s in (client.agent.services() or {}).values()
            if isinstance(s, dict) and s.get("Service") == service and (node, s.get("ID")) not in in_catalog
        ]
        for other in client.catalog.datacenters() or ():
            if other == datacenter:
                continue
            try:
                remote[other] = client.health.service(service, dc=other)[1] or []
            except consul.ERRORS as e:
                remote_errors[other] = f"{type(e).__name__}: {e}"[:200]
    finally:
        client.http.close()
    route = next((r for r in getattr(sync_state.applied, "routes", ()) if r.service == service), None)
    servers, haproxy_error = None, None
    if route is not None and settings.run_haproxy:
        try:
            servers = read_servers(settings.haproxy_stats_socket, service)
        except (haproxy.RuntimeAPIError, OSError) as e:
            haproxy_error = str(e)[:200]
    elif not settings.run_haproxy:
        haproxy_error = "this node runs no HAProxy (--no-haproxy)"
    return Answers(
        service=service,
        datacenter=datacenter,
        entries=entries or [],
        agent_index=int(index) if index else None,
        remote=remote,
        remote_errors=remote_errors,
        agent_only=local,
        applied=sync_state.applied,
        refused_routes=dict(sync_state.refused_routes),
        configured=settings.routes,
        include_warning=settings.watch.include_warning,
        servers=servers,
        haproxy_error=haproxy_error,
        last_error=sync_state.last_error,
    )
