"""The services basenode registers, from registrator's variables and `[services.NAME]` tables.

Registrator's names: `SERVICE_NAME`, `SERVICE_PORT`, `SERVICE_ID`, `SERVICE_TAGS`, `SERVICE_META`,
`SERVICE_ADDRESS`, `SERVICE_WEIGHT`, `SERVICE_CHECK_HTTP`, `SERVICE_CHECK_TCP`, `SERVICE_CHECK_GRPC`,
`SERVICE_CHECK_TTL`, `SERVICE_CHECK_INTERVAL`, `SERVICE_CHECK_TIMEOUT`,
`SERVICE_CHECK_DEREGISTER_AFTER`; and per port, as registrator names the services of a container with
several ports, `SERVICE_<PORT>_NAME`, `SERVICE_<PORT>_TAGS`, ... A per-port service takes each value
from its own variable, else from the plain one (registrator's rule); a check kind of its own
(`SERVICE_<PORT>_CHECK_{HTTP,TCP,GRPC,TTL}`) replaces the inherited kind rather than adding a second.

Values are validated here as routing will validate them on every node (snapshot.py): a tag or a meta
value this basenode would register but every other node would drop is refused before anything
starts. Each error is one line naming the variable (or file:line and key) and what is wrong; a meta
value is never echoed (it may be a secret someone put there).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .config import SERVICE_NAME_RE, ConfigError, Service, parse_port
from .snapshot import MAX_WEIGHT, SAFE_TOKEN_RE, Rejected, check_address

# Consul's duration syntax as its checks take it; `h` for DeregisterCriticalServiceAfter.
DURATION_RE = re.compile(r"^\d{1,9}(ms|s|m|h)\Z")
TAG_RE = re.compile(r"^[A-Za-z0-9._:/=-]{1,128}\Z")
META_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")  # Consul's own rule for meta keys
META_MAX_PAIRS = 64  # Consul's limit
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")
CHECK_KINDS = ("check_http", "check_tcp", "check_grpc", "check_ttl")

# key in [services.NAME] -> the registrator variable's suffix (SERVICE_<suffix>, SERVICE_<port>_<suffix>)
VARIABLES = {
    "port": "PORT",
    "id": "ID",
    "tags": "TAGS",
    "meta": "META",
    "address": "ADDRESS",
    "weight": "WEIGHT",
    "check_http": "CHECK_HTTP",
    "check_tcp": "CHECK_TCP",
    "check_grpc": "CHECK_GRPC",
    "check_ttl": "CHECK_TTL",
    "check_interval": "CHECK_INTERVAL",
    "check_timeout": "CHECK_TIMEOUT",
    "check_deregister_after": "CHECK_DEREGISTER_AFTER",
}
PORT_VARIABLE_RE = re.compile(r"^SERVICE_(\d{1,5})_([A-Z_]+)\Z")


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, str) else '"' + value[:80].replace('"', '\\"') + '"'


def _duration(value: Any, fail: Callable[[str], ConfigError], default: Optional[str]) -> Optional[str]:
    if value is None or value == "":
        return default
    if not isinstance(value, str) or not DURATION_RE.match(value) or not int(value.rstrip("mhs")):
        raise fail(f"expected a duration like 10s, 500ms or 5m, got {_show(value)}")
    return value


def _flag(value: Any, fail: Callable[[str], ConfigError]) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise fail(f"expected 1/0, true/false, yes/no or on/off, got {_show(value)}")


def _tags(value: Any, fail: Callable[[str], ConfigError]) -> Tuple[str, ...]:
    tags = [t.strip() for t in value.split(",") if t.strip()] if isinstance(value, str) else value
    if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) and TAG_RE.match(t) for t in tags):
        raise fail(f"expected a comma list of tags of [A-Za-z0-9._:/=-], got {_show(value)}")
    return tuple(tags)


def _meta(value: Any, fail: Callable[[str], ConfigError]) -> Tuple[Tuple[str, str], ...]:
    """`k=v,k2=v2` (or a table): keys by Consul's rule, values as routing accepts them, never echoed."""
    if isinstance(value, str):
        pairs: List[Tuple[Any, Any]] = []
        for number, item in enumerate((i.strip() for i in value.split(",")), 1):
            k, sep, v = item.partition("=")
            if item and not sep:
                raise fail(f"expected a comma list of key=value, item {number} has no '=' (not shown)")
            if item:
                pairs.append((k.strip(), v.strip()))
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        raise fail("expected a comma list of key=value (or a table)")
    if len(pairs) > META_MAX_PAIRS:
        raise fail(f"at most {META_MAX_PAIRS} meta pairs (Consul's limit), got {len(pairs)}")
    for k, v in pairs:
        if not isinstance(k, str) or not META_KEY_RE.match(k) or k.startswith("consul-"):
            raise fail(f"meta key {_show(k)} must match [A-Za-z0-9_-]{{1,128}} and not start with consul-")
        if not isinstance(v, str) or not SAFE_TOKEN_RE.match(v):
            raise fail(
                f"meta key {k}: the value must be 1-256 of [A-Za-z0-9._:/@%+=,~-] (no spaces), as every "
                "node's routing accepts it (value not shown)"
            )
    if len({k for k, _ in pairs}) != len(pairs):
        raise fail("a meta key is given twice")
    return tuple(sorted(pairs))


def _weight(value: Any, fail: Callable[[str], ConfigError]) -> Optional[Tuple[int, int]]:
    """`N` or `N/M` (or a table {passing, warning}) -> (passing, warning); warning defaults to 1."""
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        unknown = set(value) - {"passing", "warning"}
        if unknown:
            raise fail(f"unknown key {sorted(unknown)[0]!r} (passing, warning)")
        parts: List[Any] = [value.get("passing", 1), value.get("warning", 1)]
    elif isinstance(value, str):
        parts = value.split("/")
    else:
        parts = [value]
    if len(parts) == 1:
        parts.append(1)
    try:
        if len(parts) != 2 or any(isinstance(p, (bool, float)) for p in parts):
            raise ValueError
        passing, warning = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise fail(f"expected PASSING[/WARNING] weights, e.g. 10 or 10/1, got {_show(value)}") from None
    if not 1 <= passing <= MAX_WEIGHT or not 0 <= warning <= MAX_WEIGHT:
        raise fail(f"expected passing 1-{MAX_WEIGHT} and warning 0-{MAX_WEIGHT}, got {_show(value)}")
    return passing, warning


def _grpc(value: Any, port: int, fail: Callable[[str], ConfigError]) -> Optional[str]:
    """`1` (the service's port on 127.0.0.1), a gRPC service name checked there, or HOST:PORT[/SERVICE]."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in FALSE_WORDS):
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in TRUE_WORDS):
        return f"127.0.0.1:{port}"
    if isinstance(value, str) and SAFE_TOKEN_RE.match(value):
        if ":" not in value:
            return f"127.0.0.1:{port}/{value}"
        host, _, rest = value.rpartition(":")
        check_port, _, _ = rest.partition("/")
        try:
            check_address(host.strip("[]"))
            parse_port(check_port)
            return value
        except (Rejected, ValueError):
            pass
    raise fail(f"expected 1, a gRPC service name or HOST:PORT[/SERVICE], got {_show(value)}")


def service_from(
    name: str, values: Mapping[str, Any], source: Callable[[str], str], key: Callable[[str], str]
) -> Service:
    """One service from registrator's variables or a [services.NAME] table (both as a mapping)."""

    def failing(field: str) -> Callable[[str], ConfigError]:
        return lambda message: ConfigError(source(field), key(field), message)

    if not isinstance(name, str) or not SERVICE_NAME_RE.match(name):
        raise failing("")(f"service name must match [A-Za-z0-9._-]{{1,128}}, got {_show(name)}")
    if values.get("port") in (None, ""):
        raise failing("port")("required: the port the application listens on")
    try:
        port = parse_port(values["port"])
    except ValueError as e:
        raise failing("port")(str(e)) from None
    service_id = values.get("id") or ""
    if service_id and (not isinstance(service_id, str) or not SERVICE_NAME_RE.match(service_id)):
        raise failing("id")(f"service id must match [A-Za-z0-9._-]{{1,128}}, got {_show(service_id)}")
    address = values.get("address") or None
    if address is not None:
        try:
            address = check_address(address)
        except Rejected:
            raise failing("address")(f"expected an IP address or a host name, got {_show(address)}") from None
    check_http = values.get("check_http") or None
    if check_http is not None and (not isinstance(check_http, str) or any(c.isspace() for c in check_http)):
        raise failing("check_http")(f"expected a path like /health or a URL, got {_show(check_http)}")
    check_tcp = _flag(values.get("check_tcp", False), failing("check_tcp"))
    check_grpc = _grpc(values.get("check_grpc"), port, failing("check_grpc"))
    check_ttl = _duration(values.get("check_ttl"), failing("check_ttl"), None)
    kinds = [k for k, v in zip(CHECK_KINDS, (check_http, check_tcp, check_grpc, check_ttl)) if v]
    if len(kinds) > 1:
        raise failing(kinds[1])(f"one check per service, and {key(kinds[0]) or source(kinds[0])} is set too")
    return Service(
        name=name,
        port=port,
        id=service_id,
        tags=_tags(values.get("tags", ()), failing("tags")),
        check_http=check_http,
        check_tcp=check_tcp,
        check_interval=_duration(values.get("check_interval"), failing("check_interval"), "10s") or "10s",
        source=source(""),
        meta=_meta(values.get("meta") or {}, failing("meta")),
        address=address,
        weight=_weight(values.get("weight"), failing("weight")),
        check_grpc=check_grpc,
        check_ttl=check_ttl,
        check_timeout=_duration(values.get("check_timeout"), failing("check_timeout"), "2s") or "2s",
        check_deregister_after=_duration(
            values.get("check_deregister_after"), failing("check_deregister_after"), None
        ),
    )


PORT_FIELDS = {**{v: f for f, v in VARIABLES.items() if f not in ("port", "id")}, "NAME": "name", "ID": "id"}


def from_environment(environ: Mapping[str, str]) -> List[Service]:
    """SERVICE_NAME and friends, then one service per port that has SERVICE_<PORT>_* variables."""
    plain = {field: environ[f"SERVICE_{v}"] for field, v in VARIABLES.items() if environ.get(f"SERVICE_{v}")}
    by_port: Dict[str, Dict[str, str]] = {}
    for variable in sorted(environ):
        match = PORT_VARIABLE_RE.match(variable)
        if match is None:
            continue
        port, suffix = match.groups()
        if suffix not in PORT_FIELDS:
            known = ", ".join(sorted(PORT_FIELDS))
            raise ConfigError(variable, "", f"unknown variable (SERVICE_<PORT>_ takes {known})")
        by_port.setdefault(port, {})[PORT_FIELDS[suffix]] = environ[variable]
    services = []
    if environ.get("SERVICE_NAME") and (not by_port or plain.get("port")):
        plain_source = lambda field: f"SERVICE_{VARIABLES.get(field, 'NAME')}"  # noqa: E731
        services.append(service_from(environ["SERVICE_NAME"], plain, plain_source, key=lambda field: ""))
    for port, own in sorted(by_port.items(), key=lambda item: int(item[0])):
        services.append(_port_service(environ, port, own, plain))
    return services


def _port_service(
    environ: Mapping[str, str], port: str, own: Dict[str, str], plain: Dict[str, str]
) -> Service:
    """The service of SERVICE_<port>_*: its own values, else the plain ones (its own check kind, if any,
    replaces the plain one)."""
    inherited = {f: v for f, v in plain.items() if f not in ("port", "id")}
    if any(own.get(kind) for kind in CHECK_KINDS):
        inherited = {f: v for f, v in inherited.items() if f not in CHECK_KINDS}
    first = f"SERVICE_{port}_{next(v for v, f in PORT_FIELDS.items() if f == sorted(own)[0])}"
    name = own.get("name") or (f"{environ['SERVICE_NAME']}-{port}" if environ.get("SERVICE_NAME") else "")
    if not name:
        raise ConfigError(
            f"SERVICE_{port}_NAME", "", f"required (or SERVICE_NAME): {first} makes port {port} a service"
        )

    def source(field: str) -> str:
        if field == "port":
            return first  # the port is in the variables' names
        suffix = VARIABLES.get(field) or ("NAME" if field in ("", "name") else field.upper())
        if field == "" and "name" not in own:
            return "SERVICE_NAME"
        return f"SERVICE_{port}_{suffix}" if field in own or field == "" else f"SERVICE_{suffix}"

    return service_from(name, {**inherited, **own, "port": port}, source, key=lambda field: "")
