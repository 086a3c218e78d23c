"""The test's own idea of what basenode must route, written from the documented rules, not from its code.

Rules (README, basenode/template/render.py's context docs, templates/haproxy.cfg.j2):
- a KV route `basenode/routes/<name>` = `PORT[/MODE][ tag=TAG]` is routed when <name> is 1-128 of
  [A-Za-z0-9._-] (and not `.` or `..`, which a URL path takes for a directory), PORT is 1-65535, MODE
  is tcp or http (default tcp), TAG a token; keys are taken in order and a route whose port an earlier
  one uses is skipped;
- an instance is routed when all its checks pass, it carries the route's tag (if any), and every value
  basenode passes to a template is safe: node name, service ID, tags, meta keys and values are tokens
  (1-256 of [A-Za-z0-9._:/@%+=,~-]), the address (the service's, else the node's) is an IP address
  literal without a zone index or an RFC 1123 host name, the port is 1-65535, the weight 0-256.
Checks are written with sets and plain string operations; no regex of basenode's is reused.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .hostile import Example

ROUTES_PREFIX = "basenode/routes/"
NAME_CHARS = frozenset(string.ascii_letters + string.digits + "._-")
TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "._:/@%+=,~-")
LABEL_CHARS = frozenset(string.ascii_letters + string.digits + "-")
INIT_ADDR = " init-addr last,libc,none"


@dataclass(frozen=True)
class Server:
    """What one server line must say: `server <key> <endpoint> weight <weight>[ init-addr ...]`."""

    endpoint: str
    weight: int
    hostname: bool

    @property
    def tail(self) -> str:
        return f"{self.endpoint} weight {self.weight}{INIT_ADDR if self.hostname else ''}"


@dataclass(frozen=True)
class ExpectedRoute:
    name: str
    port: int
    mode: str
    tag: Optional[str]
    servers: Tuple[Server, ...] = ()


def is_name(value: Any) -> bool:
    return (
        isinstance(value, str)
        and 1 <= len(value) <= 128
        and set(value) <= NAME_CHARS
        and value not in (".", "..")
    )


def is_token(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 256 and set(value) <= TOKEN_CHARS


def is_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def is_hostname(value: str) -> bool:
    labels = value.split(".")
    return len(value) <= 253 and all(
        1 <= len(label) <= 63 and set(label) <= LABEL_CHARS and label[0] != "-" and label[-1] != "-"
        for label in labels
    )


def endpoint_host(address: Any) -> Optional[Tuple[str, bool]]:
    """(host as it must appear before `:port`, is it a host name), or None when it may not be routed."""
    if not isinstance(address, str) or not address or "%" in address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return (address.lower(), True) if is_hostname(address) else None
    return (f"[{ip}]" if ip.version == 6 else str(ip)), False


def expected_routes(example: Example, stored_keys: Sequence[str]) -> List[ExpectedRoute]:
    """The routes basenode must serve, in key order, from the KV keys Consul holds (ours only)."""
    specs = {ROUTES_PREFIX + r.name: r for r in example.routes}
    routes: List[ExpectedRoute] = []
    taken = set()
    for key in sorted(stored_keys):
        spec = specs[key]
        mode = spec.mode or "tcp"
        valid = (
            is_name(spec.name)
            and is_port(spec.port)
            and mode in ("tcp", "http")
            and (spec.tag is None or is_token(spec.tag))
        )
        if valid and spec.port not in taken:
            taken.add(spec.port)
            routes.append(ExpectedRoute(spec.name, spec.port, mode, spec.tag))
    return sorted(routes, key=lambda r: r.name)


def expected_server(entry: Mapping[str, Any], tag: Optional[str]) -> Optional[Server]:
    """The server line one raw /v1/health/service entry must give, or None when it must not appear."""
    node, service = entry["Node"], entry["Service"]
    if not all(check["Status"] == "passing" for check in entry.get("Checks") or ()):
        return None
    tags = service.get("Tags") or []
    meta = service.get("Meta") or {}
    weight = (service.get("Weights") or {}).get("Passing", 1)
    host = endpoint_host(service.get("Address") or node.get("Address"))
    valid = (
        host is not None
        and is_token(node.get("Node"))
        and is_token(service.get("ID"))
        and is_port(service.get("Port"))
        and all(is_token(t) for t in tags)
        and all(is_token(k) and is_token(v) for k, v in meta.items())
        and isinstance(weight, int)
        and 0 <= weight <= 256
        and (tag is None or tag in tags)
    )
    if not valid or host is None:
        return None
    return Server(endpoint=f"{host[0]}:{service['Port']}", weight=weight, hostname=host[1])


def with_servers(route: ExpectedRoute, entries: Sequence[Mapping[str, Any]]) -> ExpectedRoute:
    servers = [s for s in (expected_server(e, route.tag) for e in entries) if s is not None]
    ordered = tuple(sorted(servers, key=lambda s: (s.endpoint, s.weight)))
    return ExpectedRoute(route.name, route.port, route.mode, route.tag, ordered)


# --- reading the rendered config back -------------------------------------------------------------


def sections(text: str) -> Dict[str, List[str]]:
    """`frontend X` / `backend X` -> the lines of that section (up to the next blank line)."""
    found: Dict[str, List[str]] = {}
    current: Optional[List[str]] = None
    for line in text.splitlines():
        if line.startswith(("frontend ", "backend ")):
            current = found.setdefault(line, [])
        elif not line.strip():
            current = None
        elif current is not None:
            current.append(line)
    return found


def server_tails(lines: Sequence[str]) -> Counter:
    """Each `server <key> ...` line of a backend, without its key, counted."""
    tails: Counter = Counter()
    for line in lines:
        if line.startswith("    server "):
            tails[line[len("    server ") :].partition(" ")[2]] += 1
    return tails


# --- line shapes ----------------------------------------------------------------------------------

# Neutral stand-ins rendered where Consul's values go, and the value classes they stand for. A value
# class has no whitespace, no quote, no `#`: a Consul value that fits one cannot start a directive.
NEUTRAL_SERVICE = "zzroute{}"
NEUTRAL_NODE, NEUTRAL_ID = "zznode", "zzid{}"
NEUTRAL_PORT = 54321
VALUE_CLASSES = {
    "zzroute": r"[A-Za-z0-9._-]{1,128}",  # a service name
    "zznode": r"[A-Za-z0-9._:-]{1,600}",  # a server name
    # an endpoint (IPv4, [IPv6] or a lower-case host name, and a port), a weight, maybe init-addr
    "192.0.2.": r"(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-f:.]+\]|[a-z0-9][a-z0-9.-]{0,252}):\d{1,5}"
    r" weight \d{1,3}(?: init-addr last,libc,none)?",
    ":": r":\d{1,5}",  # a frontend's port
}
STAND_INS = re.compile(rf"(zzroute\d+|zznode_zzid\d+|192\.0\.2\.\d+:1 weight 1|:{NEUTRAL_PORT}$)")


def line_shape(neutral_line: str) -> re.Pattern[str]:
    """A neutral line -> the pattern every line rendered in its place must match in full."""
    parts = STAND_INS.split(neutral_line)  # literal text at even indexes, stand-ins at odd ones
    pattern = "".join(
        re.escape(part) if i % 2 == 0 else next(v for k, v in VALUE_CLASSES.items() if part.startswith(k))
        for i, part in enumerate(parts)
    )
    return re.compile(pattern)
