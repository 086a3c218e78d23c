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
"""

from __future__ import annotations

import logging
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from .config import ROUTES_KV_PREFIX, SERVICE_NAME_RE, ConfigError, Route, Settings, parse_route
from .dependency import PREFIX, READ_ERRORS, SERVICE, Query, fetch_now
from .dependency.health_service import passing_instances
from .snapshot import SAFE_TOKEN_RE, RouteState, Snapshot
from .watch import WarnOnce

log = logging.getLogger("basenode.watch")

KV_SOURCE = "consul kv"
ROUTES_QUERY = Query(PREFIX, ROUTES_KV_PREFIX)


class ConsulUnavailable(Exception):
    """The agent did not answer, or answered with an error; str() says what failed (never the token)."""


# --- routes ---------------------------------------------------------------------------------------


def parse_kv_route(key: str, value: Optional[str], prefix: str = ROUTES_KV_PREFIX) -> Route:
    """`basenode/routes/web` = `9302/http tag=primary` -> Route. Raises ConfigError naming key and value."""
    source = f"{KV_SOURCE} {key}"
    service = key[len(prefix) :] if key.startswith(prefix) else key
    if value is None:
        raise ConfigError(source, "", "value is empty or not UTF-8")
    if not SERVICE_NAME_RE.match(service):
        raise ConfigError(source, "", f"service name must match [A-Za-z0-9._-]{{1,128}}, got {service!r}")
    words = value.split()
    if not words:
        raise ConfigError(source, service, f"expected PORT[/MODE][ tag=TAG], got {value!r}")
    route = parse_route(f"{service}:{words[0]}", source)
    tag = None
    for word in words[1:]:
        name, sep, tag_value = word.partition("=")
        if name != "tag" or not sep or not SAFE_TOKEN_RE.match(tag_value):
            raise ConfigError(source, service, f"expected PORT[/MODE][ tag=TAG], got {value!r}")
        tag = tag_value
    return Route(service=route.service, port=route.port, mode=route.mode, tag=tag, source=source)


def merge_routes(
    static: Sequence[Route], kv_values: Mapping[str, Optional[str]], prefix: str = ROUTES_KV_PREFIX
) -> Tuple[Tuple[Route, ...], List[str]]:
    """Static routes plus the valid KV routes that clash with none of them (and none before them, by key).

    Returns the routes sorted by service and one warning per KV entry skipped.
    """
    routes: Dict[str, Route] = {r.service: r for r in static}
    ports: Dict[int, Route] = {r.port: r for r in static}
    warnings: List[str] = []
    for key in sorted(kv_values):
        if key == prefix or (key.endswith("/") and kv_values[key] is None):
            continue  # a folder, not a route
        try:
            route = parse_kv_route(key, kv_values[key], prefix)
        except ConfigError as e:
            warnings.append(f"skipped route: {e}")
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
    return tuple(sorted(routes.values(), key=lambda r: r.service)), warnings


def route_queries(routes: Sequence[Route]) -> FrozenSet[Query]:
    """What HAProxy's routes depend on: the routes prefix and each routed service's health."""
    return frozenset([ROUTES_QUERY, *(Query(SERVICE, r.service) for r in routes)])


def build_snapshot(routes: Sequence[Route], data: Mapping[Query, Any]) -> Snapshot:
    """Routes + the watch's service values -> Snapshot; a route whose service has no value has no
    instances (its frontend still exists)."""
    states = [
        RouteState(route=r, instances=passing_instances(data.get(Query(SERVICE, r.service), ()), r.tag))
        for r in sorted(routes, key=lambda r: r.service)
    ]
    return Snapshot(routes=tuple(states))


# --- over the watch -------------------------------------------------------------------------------


class Discovery:
    """The watch's values -> HAProxy's routes and Snapshot, each distinct route warning logged once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.last: Optional[Snapshot] = None
        self._warnings = WarnOnce(log)

    def routes(self, data: Mapping[Query, Any]) -> Optional[Tuple[Route, ...]]:
        """Static + KV routes, or None while the routes prefix has not been read."""
        if ROUTES_QUERY not in data:
            return None
        routes, warnings = merge_routes(self.settings.routes, dict(data[ROUTES_QUERY]))
        self._warnings.report(warnings)
        return routes

    def wanted(self, data: Mapping[Query, Any]) -> FrozenSet[Query]:
        routes = self.routes(data)
        return route_queries(self.settings.routes if routes is None else routes)

    def snapshot(self, data: Mapping[Query, Any]) -> Optional[Snapshot]:
        """The snapshot of what is known now (see the module docstring); None before the first one."""
        routes = self.routes(data)
        if routes is None:
            return None
        previous = {state.route: state for state in (self.last.routes if self.last else ())}
        known = [r for r in routes if Query(SERVICE, r.service) in data]
        if self.last is None and len(known) < len(routes):
            return None
        states = list(build_snapshot(known, data).routes)
        states += [previous[r] for r in routes if r not in known and r in previous]
        self.last = Snapshot(routes=tuple(sorted(states, key=lambda s: s.route.service)))
        return self.last

    @staticmethod
    def instance_totals(data: Mapping[Query, Any]) -> Dict[str, int]:
        """Instances per service in the catalog, whatever their health (for status)."""
        return {q.name: len(value) for q, value in data.items() if q.kind == SERVICE}


def fetch_snapshot(settings: Settings, timeout: float = 10.0) -> Snapshot:
    """One snapshot, read now (for `basenode render`, `check` and `sync --once`). ConsulUnavailable.

    Reads the routes prefix, then each routed service: one request per route.
    """
    include_warning = settings.watch.include_warning
    try:
        data, _ = fetch_now(settings.consul_http, [ROUTES_QUERY], include_warning, timeout)
        routes, route_warnings = merge_routes(settings.routes, dict(data[ROUTES_QUERY]))
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
