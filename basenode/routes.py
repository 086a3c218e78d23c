"""HAProxy's routes as dependencies: which services get a local port, and their healthy instances.

Routes come from Settings.routes (flags, environment, config file) merged with Consul KV under
`basenode/routes/<service>`. A KV value is `PORT[/MODE][ tag=TAG]`: `9302`, `9302/http`,
`9302/http tag=primary` (only instances carrying the tag are routed). A bad KV value is skipped with
one warning naming the key and the value; a KV route whose service or port a static route already uses
is skipped too: static routes win, because they were chosen for this container, the KV tree for the
whole cluster.

What HAProxy needs is then two kinds of dependency on the shared watch: the routes prefix, and the
health of each routed service (the same query a template's `service()` uses, so the two share it).
`Discovery.snapshot(data)` turns the watch's values into the validated, immutable Snapshot that the
HAProxy template renders. A route whose service has not been read yet is held back until it has (its
frontend appears with its instances, not empty first); one already routed keeps its last instances
while its read fails: a failed read is unknown, never "no instances".

Datacenters: a route reads its instances from its `datacenter` (default: the local agent's), and a
route with `failover = [dc2, dc3]` also reads the service in each of those. The healthy instances of
the first of them that has any become `backup` servers of the route's own backend (`option
allbackups`: they share the load). So HAProxy fails over in the data plane, with no reload and no
wait for basenode: the moment the local servers are gone (removed through the runtime API when Consul
says so) or marked down by HAProxy's own check, and it comes back as soon as one returns. Backups in
the same backend, rather than a second backend, because HAProxy switches to backups per request with
no rule to write and no reload to change; the order among failover datacenters is basenode's (HAProxy
has one level of backups): when dc2 has no healthy instance left, dc3's replace them at runtime.
"""

from __future__ import annotations

import functools
import logging
import operator
import re
import socket
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Collection, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from .config import (
    DEFAULT_KV_ROUTE_LIMIT,
    DEFAULT_KV_ROUTE_PORTS,
    ROUTES_KV_PREFIX,
    SERVICE_NAME_RE,
    ConfigError,
    Route,
    Settings,
    parse_route,
    with_options,
)
from .dependency import PREFIX, READ_ERRORS, SERVICE, Query, fetch_now
from .dependency.health_service import passing_instances
from .snapshot import RouteState, Snapshot
from .watch import WarnOnce

log = logging.getLogger("basenode.watch")

KV_SOURCE = "consul kv"
ROUTES_QUERY = Query(PREFIX, ROUTES_KV_PREFIX)


class ConsulUnavailable(Exception):
    """The agent did not answer, or answered with an error; str() says what failed (never the token)."""


# --- routes ---------------------------------------------------------------------------------------


def parse_kv_route(key: str, value: Optional[str], prefix: str = ROUTES_KV_PREFIX) -> Route:
    """`basenode/routes/web` = `9302/http tag=primary balance=leastconn` -> Route.

    Raises ConfigError naming the key, the value (or the bad option and its value)."""
    source = f"{KV_SOURCE} {key}"
    service = key[len(prefix) :] if key.startswith(prefix) else key
    if value is None:
        raise ConfigError(source, "", "value is empty or not UTF-8")
    if not SERVICE_NAME_RE.match(service):
        raise ConfigError(source, "", f"service name must match [A-Za-z0-9._-]{{1,128}}, got {service!r}")
    words = value.split()
    if not words or ";" in words[0]:
        raise ConfigError(source, service, f"expected PORT[/MODE][ tag=TAG][ OPTION=VALUE...], got {value!r}")
    return with_options(parse_route(f"{service}:{words[0]}", source), words[1:])


@dataclass(frozen=True)
class KVRoutePolicy:
    """What a KV route may ask for: one key reaches every node, so it must not take a port this node
    needs for something else, nor open an unbounded number of listeners."""

    ports: Tuple[int, int] = DEFAULT_KV_ROUTE_PORTS  # allowed, inclusive
    limit: int = DEFAULT_KV_ROUTE_LIMIT
    taken: Mapping[int, str] = field(default_factory=dict)  # port -> what this node uses it for

    def refusal(self, route: Route, accepted: int) -> Optional[str]:
        low, high = self.ports
        if not low <= route.port <= high:
            return f"port {route.port} is outside kv_route_ports {low}-{high}"
        if route.port in self.taken:
            return f"port {route.port} is taken by {self.taken[route.port]}"
        if accepted >= self.limit:
            return f"more KV routes than kv_route_limit ({self.limit})"
        return None


AGENT_PORTS = {8300: "server", 8301: "serf_lan", 8302: "serf_wan", 8500: "http", 8502: "grpc", 8600: "dns"}
AGENT_PORT_ARG_RE = re.compile(r"^-(http|https|dns|serf-lan|serf-wan|server|grpc)-port=(\d+)$")


def kv_route_policy(settings: Settings) -> KVRoutePolicy:
    """The ports this node knows are taken: the status endpoint, the agent's (when basenode runs it,
    as its command line sets them), the API it reads, and the services it registers."""
    taken: Dict[int, str] = {settings.status_addr[1]: "the status endpoint (status_addr)"}
    if settings.run_consul:
        ports = dict(AGENT_PORTS)
        for arg in settings.agent.extra_args:
            match = AGENT_PORT_ARG_RE.match(arg)
            if match:
                ports = {p: n for p, n in ports.items() if n != match.group(1).replace("-", "_")}
                ports[int(match.group(2))] = match.group(1)
        taken.update({port: f"the Consul agent ({name})" for port, name in ports.items()})
    taken[settings.consul_http.host_port[1]] = "the Consul HTTP API basenode reads"
    for service in settings.services:
        taken[service.port] = f"service {service.name} (registered by this node)"
    return KVRoutePolicy(settings.kv_route_ports, settings.kv_route_limit, taken)


@dataclass(frozen=True)
class MergedRoutes:
    routes: Tuple[Route, ...]  # sorted by service
    warnings: Tuple[str, ...]  # one per KV entry skipped
    bad_values: Mapping[str, str] = field(default_factory=dict)  # KV key -> what is wrong with its value


def merge_kv_routes(
    static: Sequence[Route],
    kv_values: Mapping[str, Optional[str]],
    prefix: str = ROUTES_KV_PREFIX,
    policy: KVRoutePolicy = KVRoutePolicy(),
) -> MergedRoutes:
    """Static routes plus the valid KV routes that clash with none of them (and none before them, by key)
    and that `policy` allows. A KV value that does not parse (a bad port, mode, tag or option) skips
    its route only."""
    routes: Dict[str, Route] = {r.service: r for r in static}
    ports: Dict[int, Route] = {r.port: r for r in static}
    warnings: List[str] = []
    bad_values: Dict[str, str] = {}
    accepted = 0
    for key in sorted(kv_values):
        if key == prefix or (key.endswith("/") and kv_values[key] is None):
            continue  # a folder, not a route
        try:
            route = parse_kv_route(key, kv_values[key], prefix)
        except ConfigError as e:
            warnings.append(f"skipped route: {e}")
            bad_values[key] = e.message
            continue
        refusal = policy.refusal(route, accepted)
        if refusal is not None:
            warnings.append(f"skipped route: {route.source}: {refusal}")
            continue
        clash = routes.get(route.service) or ports.get(route.port)
        if clash is not None:
            what = "service" if clash.service == route.service else f"port {route.port}"
            warnings.append(
                f"skipped route: {route.source}: {what} already routed by {clash.source or 'settings'}"
                f" ({clash.service}:{clash.port})"
            )
            continue
        routes[route.service] = route
        ports[route.port] = route
        accepted += 1
    return MergedRoutes(tuple(sorted(routes.values(), key=lambda r: r.service)), tuple(warnings), bad_values)


def merge_routes(
    static: Sequence[Route],
    kv_values: Mapping[str, Optional[str]],
    prefix: str = ROUTES_KV_PREFIX,
    policy: KVRoutePolicy = KVRoutePolicy(),
) -> Tuple[Tuple[Route, ...], List[str]]:
    """merge_kv_routes' routes (sorted by service) and its warnings."""
    merged = merge_kv_routes(static, kv_values, prefix, policy)
    return merged.routes, list(merged.warnings)


def route_queries(routes: Sequence[Route]) -> FrozenSet[Query]:
    """What HAProxy's routes depend on: the routes prefix and each routed service's health, in its
    own datacenter and in each failover datacenter."""
    failover = (q for r in routes for q in failover_queries(r))
    return frozenset([ROUTES_QUERY, *(primary_query(r) for r in routes), *failover])


# A route's queries are asked for on every change, a few times for each of thousands of routes:
# made once per route (a route hashes once, see frozen.py). Sized for 5,000 routes and their churn.
@functools.lru_cache(maxsize=16384)
def failover_queries(route: Route) -> Tuple[Query, ...]:
    return tuple(Query(SERVICE, route.service, dc) for dc in route.failover)


@functools.lru_cache(maxsize=16384)
def primary_query(route: Route) -> Query:
    """The read of the route's own instances (its datacenter's, by default the local one's)."""
    return Query(SERVICE, route.service, route.datacenter or "")


def route_state(route: Route, data: Mapping[Query, Any]) -> RouteState:
    """The route's healthy instances and its backups: the healthy instances of the first failover
    datacenter that has any (a failover datacenter not read yet counts as having none)."""
    instances = passing_instances(data.get(primary_query(route), ()), route.tag)
    taken = {i.key for i in instances}
    for dc, query in zip(route.failover, failover_queries(route)):
        found = passing_instances(data.get(query, ()), route.tag)
        backups = tuple(b for b in (replace(i, datacenter=dc) for i in found) if b.key not in taken)
        if backups:
            return RouteState(route, instances, backups, dc)
    return RouteState(route, instances)


def build_snapshot(routes: Sequence[Route], data: Mapping[Query, Any]) -> Snapshot:
    """Routes + the watch's service values -> Snapshot; a route whose service has no value has no
    instances (its frontend still exists)."""
    return Snapshot(routes=tuple(route_state(r, data) for r in sorted(routes, key=lambda r: r.service)))


# --- over the watch -------------------------------------------------------------------------------


def _by_service(state: RouteState) -> str:
    return state.route.service


def _service(route: Route) -> str:
    return route.service


def bind_error(host: str, port: int) -> Optional[str]:
    """Why HAProxy could not listen on host:port now, or None when it could.

    Probed the way HAProxy binds on Linux (SO_REUSEADDR and SO_REUSEPORT), so a port that another
    HAProxy listener of ours holds probes free, and one that any other socket holds does not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            return f"cannot listen on {host}:{port}: {e.strerror or e}"
    return None


class Discovery:
    """The watch's values -> HAProxy's routes and Snapshot, each distinct route warning logged once.

    A KV route whose port cannot be bound (another process holds it) is left out, so that it cannot
    make HAProxy's reload fail for every other route; it is reported in `refused` with its key and
    tried again when its key's value changes. A KV value that does not parse (a bad port, mode, tag or
    option) is reported there too, with what is wrong with it.
    """

    def __init__(self, settings: Settings, probe: Callable[[str, int], Optional[str]] = bind_error) -> None:
        self.settings = settings
        self.policy = kv_route_policy(settings)
        self.last: Optional[Snapshot] = None
        self.refused: Dict[str, str] = {}  # KV key -> why its route is left out
        self._probe = probe
        self._probed: Dict[Route, Optional[str]] = {}  # a KV route (its key's value) -> bind error
        self._warnings = WarnOnce(log)
        # route -> (the values its state was computed from, the state): see _state
        self._states: Dict[Route, Tuple[Tuple[Any, ...], RouteState]] = {}
        self._routes: Optional[Tuple[Any, Tuple[Route, ...]]] = None  # (the routes prefix's value, routes)
        self._queries: Tuple[Tuple[Route, ...], FrozenSet[Query]] = ((), route_queries(()))
        self._sorted: Tuple[Tuple[Route, ...], Tuple[Route, ...]] = ((), ())  # (routes, by service)
        self._whole: Optional[Tuple[Route, ...]] = None  # the routes `last` has every state of, in order
        # (the routes by service, query -> the positions of the routes that read it)
        self._readers: Tuple[Tuple[Route, ...], Dict[Query, List[int]]] = ((), {})

    def routes(self, data: Mapping[Query, Any]) -> Optional[Tuple[Route, ...]]:
        """Static + KV routes, or None while the routes prefix has not been read.

        Worked out again only when the routes prefix's value was replaced (the watch stores a new
        object for a changed value): an instance change, the common one, leaves the routes as they were.
        """
        if ROUTES_QUERY not in data:
            return None
        kv = data[ROUTES_QUERY]
        if self._routes is not None and self._routes[0] is kv:
            return self._routes[1]
        merged = merge_kv_routes(self.settings.routes, dict(kv), policy=self.policy)
        routes = self._bindable(merged.routes)
        unbindable = [f"skipped route: {KV_SOURCE} {k}: {why}" for k, why in self.refused.items()]
        self._warnings.report([*merged.warnings, *unbindable])
        self.refused.update(merged.bad_values)
        self._routes = (kv, routes)
        return routes

    def _bindable(self, routes: Tuple[Route, ...]) -> Tuple[Route, ...]:
        serving = {state.route.port for state in (self.last.routes if self.last else ())}
        probed: Dict[Route, Optional[str]] = {}
        for route in routes:
            if not route.source.startswith(KV_SOURCE) or route.port in serving:
                continue
            probed[route] = (
                self._probed[route] if route in self._probed else self._probe(self.settings.bind, route.port)
            )
        self._probed = probed
        self.refused = {r.source[len(KV_SOURCE) + 1 :]: why for r, why in probed.items() if why}
        return tuple(r for r in routes if not probed.get(r))

    def wanted(self, data: Mapping[Query, Any]) -> FrozenSet[Query]:
        routes = self.routes(data)
        routes = self.settings.routes if routes is None else routes
        if self._queries[0] is not routes:
            self._queries = (routes, route_queries(routes))
        return self._queries[1]

    def snapshot(
        self, data: Mapping[Query, Any], changed: Optional[Collection[Query]] = None
    ) -> Optional[Snapshot]:
        """The snapshot of what is known now (see the module docstring); None before the first one.

        `changed`: the queries whose values were replaced since the last call (the watch says which),
        so that only the routes that read them are looked at; without it, every route is."""
        routes = self.routes(data)
        if routes is None:
            return None
        if self._sorted[0] is not routes:
            self._sorted = (routes, tuple(sorted(routes, key=_service)))
        if changed is not None and self._whole is routes and self.last is not None:
            return self._snapshot_of(changed, data)
        states, unread = [], []
        for route in self._sorted[1]:  # in the snapshot's order already
            if primary_query(route) in data:
                states.append(self._state(route, data))
            else:
                unread.append(route)
        if unread:  # a route added a moment ago: its service is being read
            if self.last is None:
                return None
            previous = {state.route: state for state in self.last.routes}
            states += [previous[r] for r in unread if r in previous]
            states.sort(key=_by_service)
        self.last = Snapshot(routes=tuple(states))
        # Every route has its state, in the order of _sorted: the next change can replace just its own.
        self._whole = None if unread else routes
        if len(self._states) > len(states):
            known = {state.route for state in states}
            self._states = {r: entry for r, entry in self._states.items() if r in known}
        return self.last

    def _snapshot_of(self, changed: Collection[Query], data: Mapping[Query, Any]) -> Snapshot:
        """The last snapshot with the states of the routes that read a changed query made again."""
        ordered = self._sorted[1]
        if self._readers[0] is not ordered:
            readers: Dict[Query, List[int]] = {}
            for i, route in enumerate(ordered):
                for query in (primary_query(route), *failover_queries(route)):
                    readers.setdefault(query, []).append(i)
            self._readers = (ordered, readers)
        touched = {i for query in changed for i in self._readers[1].get(query, ())}
        if not touched:
            return self.last  # type: ignore[return-value]  # set by the caller's check
        states = list(self.last.routes)  # type: ignore[union-attr]
        for i in touched:
            states[i] = self._state(ordered[i], data)
        self.last = Snapshot(routes=tuple(states))
        return self.last

    def _state(self, route: Route, data: Mapping[Query, Any]) -> RouteState:
        """route_state, computed again only when one of the route's values was replaced: the watch
        stores a new object for a changed value, so a change to one service revalidates that one."""
        failover = failover_queries(route)
        primary = data.get(primary_query(route))
        inputs = (primary, *[data.get(q) for q in failover]) if failover else (primary,)
        cached = self._states.get(route)
        # `is`, not ==: the same objects (held here, so no id is reused), not an equal comparison
        # of every instance of every route on each change
        if cached is not None and all(map(operator.is_, cached[0], inputs)):
            return cached[1]
        state = route_state(route, data)
        self._states[route] = (inputs, state)
        return state

    @staticmethod
    def instance_totals(data: Mapping[Query, Any]) -> Dict[str, int]:
        """Instances per service in the catalog, whatever their health (for status)."""
        return {q.name: len(value) for q, value in data.items() if q.kind == SERVICE and not q.datacenter}


def fetch_snapshot(settings: Settings, timeout: float = 10.0) -> Snapshot:
    """One snapshot, read now (for `basenode render`, `check` and `sync --once`). ConsulUnavailable.

    Reads the routes prefix, then each routed service: one request per route.
    """
    include_warning = settings.watch.include_warning
    try:
        data, _ = fetch_now(settings.consul_http, [ROUTES_QUERY], include_warning, timeout)
        routes, route_warnings = merge_routes(
            settings.routes, dict(data[ROUTES_QUERY]), policy=kv_route_policy(settings)
        )
        values, warnings = fetch_now(settings.consul_http, route_queries(routes), include_warning, timeout)
    except READ_ERRORS as e:
        raise ConsulUnavailable(
            f"cannot read Consul at {settings.consul_http.addr}: {type(e).__name__}: {e}"[:500]
        ) from e
    for text in [*route_warnings, *warnings]:
        log.warning("%s", text)
    return build_snapshot(routes, values)


def static_snapshot(settings: Settings) -> Snapshot:
    """The configured routes with no instances: what `basenode check` renders without a cluster."""
    return build_snapshot(settings.routes, {})
