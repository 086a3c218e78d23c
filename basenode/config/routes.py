"""Routes: `--routes` / BASENODE_ROUTES text, or the file's `[routes.NAME]` tables; each validated."""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence, Tuple

from ..route_options import OptionError, parse_options, split_words
from ..route_options import show as show_option
from ..tokens import SAFE_TOKEN_RE
from .errors import ConfigError, show
from .file import FileValues, Table, Tables
from .layers import Environ, first_layer
from .model import DATACENTER_RE, ROUTE_MODES, SERVICE_NAME_RE, Route
from .options import BY_NAME
from .values import parse_port


def parse_route(text: str, source: str) -> Route:
    """One route, `service:port[/mode][;name=value...]`; raises ConfigError naming the text and its source.

    The `name=value` items are `tag` and the options of basenode/route_options.py."""
    spec, *items = text.strip().split(";")
    service, sep, rest = spec.strip().partition(":")
    port_text, _, mode = rest.partition("/")
    mode = mode or "tcp"
    problem = None
    if not sep:
        problem = "expected service:port[/mode]"
    elif not SERVICE_NAME_RE.match(service):
        problem = "service name must match [A-Za-z0-9._-]{1,128}"
    elif mode not in ROUTE_MODES:
        problem = f"mode must be tcp or http, got {show(mode)}"
    else:
        try:
            route = Route(service=service, port=parse_port(port_text), mode=mode, source=source)
        except ValueError as e:
            problem = str(e)
        else:
            return with_options(route, [item.strip() for item in items if item.strip()])
    raise ConfigError(source, "", f"route {show(text.strip())}: {problem}")


def with_options(route: Route, words: Sequence[str]) -> Route:
    """`route` with the `tag=TAG` and option words of its text form (`--routes`, a KV value).

    ConfigError naming the route, the option, its value and the route's source."""
    try:
        pairs = split_words(words)
        tag = pairs.pop("tag", None)
        if tag is not None and not SAFE_TOKEN_RE.match(tag):
            raise OptionError("tag", tag, "expected a tag of letters, digits and ._:/@%+=,~-")
        if "dc" in pairs and "datacenter" in pairs:
            raise OptionError("dc", pairs["dc"], "given twice (dc and datacenter)")
        dc_name = "datacenter" if "datacenter" in pairs else "dc"
        failover_text = pairs.pop("failover", None)
        failover = None if failover_text is None else re.split(r"[+,]", failover_text)
        datacenter, failover = datacenters(pairs.pop(dc_name, None), failover, dc_name, failover_text)
        options = parse_options(pairs, route.mode)
    except OptionError as e:
        raise ConfigError(route.source, "", f"route {route.service}: {e}") from None
    return Route(route.service, route.port, route.mode, tag, route.source, options, datacenter, failover)


MAX_FAILOVER = 5


def datacenters(
    datacenter: Any, failover: Any, dc_name: str = "datacenter", failover_shown: Any = None
) -> Tuple[Optional[str], Tuple[str, ...]]:
    """A route's datacenter and failover list, validated; OptionError naming the bad one (the failover
    list as written, `failover_shown`, when it was text)."""
    shown = failover if failover_shown is None else failover_shown
    if datacenter is not None and not (isinstance(datacenter, str) and DATACENTER_RE.match(datacenter)):
        raise OptionError(dc_name, datacenter, "expected a datacenter name of letters, digits, _ and -")
    if failover is None:
        return datacenter, ()
    names = [failover] if isinstance(failover, str) else failover
    if not isinstance(names, (list, tuple)) or not names or len(names) > MAX_FAILOVER:
        raise OptionError("failover", shown, f"expected a list of 1-{MAX_FAILOVER} datacenter names")
    for name in names:
        if not (isinstance(name, str) and DATACENTER_RE.match(name)):
            raise OptionError("failover", shown, f"{show_option(name)} is not a datacenter name")
    if len(set(names)) != len(names) or datacenter in names:
        raise OptionError("failover", shown, "names a datacenter twice (or the route's own)")
    return datacenter, tuple(names)


def parse_routes(text: str, source: str) -> Tuple[Route, ...]:
    """`postgresql:9301,web:9302/http;balance=leastconn` -> routes; empty items are ignored."""
    return tuple(parse_route(item, source) for item in text.split(",") if item.strip())


def check_routes(routes: Sequence[Route]) -> None:
    """Two routes may not share a service or a port."""
    by_service: dict[str, Route] = {}
    by_port: dict[int, Route] = {}
    for route in routes:
        first = by_service.get(route.service)
        if first is not None:
            raise ConfigError(
                route.source, "", f"route {show(route.service)} defined twice (first at {first.source})"
            )
        first = by_port.get(route.port)
        if first is not None:
            raise ConfigError(
                route.source,
                "",
                f"route {show(route.service)}: port {route.port} already used by {show(first.service)}",
            )
        by_service[route.service] = route
        by_port[route.port] = route


def route_from_table(file: Optional[FileValues], service: str, values: Any) -> Route:
    t = Table(file, f"routes.{service}", values if isinstance(values, Mapping) else {})
    if not isinstance(values, Mapping):
        raise t.fail("", f"expected a table with port, mode, tag and options, got {show(values)}")
    if not SERVICE_NAME_RE.match(service):
        raise t.fail("", f"service name must match [A-Za-z0-9._-]{{1,128}}, got {show(service)}")
    if "port" not in values:
        raise t.fail("port", "required")
    port, mode, tag = t.get("port", "port"), t.get("mode", "text", "tcp"), t.get("tag", "text")
    if mode not in ROUTE_MODES:
        raise t.fail("mode", f"expected tcp or http, got {show(mode)}")
    route_keys = ("port", "mode", "tag", "datacenter", "failover")
    option_values = {name: value for name, value in values.items() if name not in route_keys}
    try:
        datacenter, failover = datacenters(values.get("datacenter"), values.get("failover"))
        options = parse_options(option_values, mode)
    except OptionError as e:
        raise t.fail(e.option, f"route {service}: {e}") from None
    t.used.update(values)
    return Route(
        service=service,
        port=port,
        mode=mode,
        tag=tag,
        source=t.source(""),
        options=options,
        datacenter=datacenter,
        failover=failover,
    )


def load_routes(flags: Any, environ: Environ, tables: Tables) -> Tuple[Route, ...]:
    """The first layer that names routes defines them all (no merging across layers), sorted by service."""
    layer = first_layer(BY_NAME["routes"], flags, environ, tables)
    if layer is None:
        routes: Tuple[Route, ...] = ()
    elif layer.origin == "file":
        routes = tuple(route_from_table(tables.file, s, v) for s, v in tables.top.table("routes").items())
    else:
        routes = parse_routes(layer.raw, layer.source)
    check_routes(routes)
    return tuple(sorted(routes, key=lambda r: r.service))
