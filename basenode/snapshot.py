"""Snapshot: the validated, immutable picture of the catalog that render turns into text.

Every value that comes from Consul passes through here before a template can see it.
Consul accepts almost anything in a registration (newlines in tags, `1.2.3.4; rm` as an
address, port 70000), and a template writes values into a config file verbatim, so an
instance with any value we cannot prove safe is dropped, with one warning naming it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Tuple

from .config import SERVICE_NAME_RE, Route
from .frozen import cached_hash
from .tokens import HOSTNAME_RE, SAFE_TOKEN_RE

MAX_WEIGHT = 256
# HAProxy accepts only these characters in proxy and server names (anything else fails `haproxy -c`,
# and one bad name would then block every later update).
SERVER_NAME_BAD_RE = re.compile(r"[^A-Za-z0-9._:-]")


@dataclass(frozen=True)
class Instance:
    id: str
    node: str
    address: str
    port: int
    tags: Tuple[str, ...] = ()
    meta: Tuple[Tuple[str, str], ...] = ()
    weight: int = 1
    datacenter: str = ""  # set on a failover datacenter's instance: "" is the route's own datacenter

    @property
    def key(self) -> str:
        """Stable server name inside its backend (unique per service), always a valid HAProxy name;
        a failover datacenter's instance is `<datacenter>:<key>`, apart from the route's own."""
        return f"{self.datacenter}:{self._key}" if self.datacenter else self._key

    @property
    def _key(self) -> str:
        """The name within one datacenter.

        Consul IDs may contain `/`, `@`, `%`... which HAProxy refuses in a server name: those are
        replaced by `_`, and a short hash of the original keeps two such IDs apart. A node name with
        `_` makes `node_id` ambiguous (node `n_a` + ID `b`, node `n` + ID `a_b`): the hash of both
        parts, apart, then tells the two instances apart (otherwise one of them would be dropped).
        """
        raw = f"{self.node}_{self.id}"
        safe = SERVER_NAME_BAD_RE.sub("_", raw)
        if "_" not in self.node and safe == raw:
            return raw
        # NUL is in no token, so "node NUL id" names one instance only.
        hashed = raw if "_" not in self.node else f"{self.node}\0{self.id}"
        return f"{safe}-{hashlib.sha256(hashed.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class RouteState:
    route: Route
    instances: Tuple[Instance, ...]  # sorted, healthy, validated
    # The backup servers: the healthy instances of the first failover datacenter that has any.
    backups: Tuple[Instance, ...] = ()
    backup_datacenter: Optional[str] = None

    __hash__ = cached_hash


@dataclass(frozen=True)
class Snapshot:
    routes: Tuple[RouteState, ...]  # sorted by service name


class Rejected(ValueError):
    """An instance that will not reach any config file; str() says which value and why.

    `field` names the value and `problem` what is wrong with it, without the value itself (which may be
    a secret someone put in a tag or meta): what `basenode explain` shows.
    """

    def __init__(self, what: str, value: Any, problem: str, field: Optional[str] = None) -> None:
        shown = "" if value is _NO_VALUE else f" {show(value)}"
        super().__init__(f"{what}{shown} {problem}")
        self.field = field or what
        self.problem = problem


_NO_VALUE = object()


def safe_token(value: Any, what: str, field: Optional[str] = None) -> str:
    if not isinstance(value, str) or not SAFE_TOKEN_RE.match(value):
        raise Rejected(what, value, "is not a safe token", field)
    return value


def check_address(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise Rejected("address", value, "is empty or not text")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        # An IPv6 zone index (fe80::1%eth0) may be any text, spaces and newlines included, and HAProxy
        # cannot resolve an address with one: it would fail `haproxy -c` or inject a line.
        if getattr(ip, "scope_id", None) is None:
            return str(ip)
        raise Rejected("address", value, "has an IPv6 zone index")
    if HOSTNAME_RE.match(value):
        return value.lower()
    raise Rejected("address", value, "is neither an IP address nor a host name")


def check_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise Rejected("port", value, "is not 1-65535")
    return value


def instance_from_health(entry: Mapping[str, Any]) -> Instance:
    """One element of /v1/health/service/<name> -> Instance, or Rejected."""
    node = entry.get("Node") or {}
    service = entry.get("Service") or {}
    if not isinstance(node, Mapping) or not isinstance(service, Mapping):
        raise Rejected("node or service", _NO_VALUE, "is not an object")
    node_name = safe_token(node.get("Node"), "node name")
    service_id = safe_token(service.get("ID"), "service id")
    address = check_address(service.get("Address") or node.get("Address"))
    port = check_port(service.get("Port"))
    tags = tuple(safe_token(t, "tag") for t in (service.get("Tags") or ()))
    meta_in = service.get("Meta") or {}
    if not isinstance(meta_in, Mapping):
        raise Rejected("meta", _NO_VALUE, "is not an object")
    meta = tuple(
        sorted(
            (safe_token(k, "meta key"), safe_token(v, "meta value", field=f"meta value of key {k}"))
            for k, v in meta_in.items()
        )
    )
    weights = service.get("Weights") or {}
    weight = weights.get("Passing", 1) if isinstance(weights, Mapping) else 1
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
        raise Rejected("weight", weight, f"is not 0-{MAX_WEIGHT}")
    return Instance(
        id=service_id, node=node_name, address=address, port=port, tags=tags, meta=meta, weight=weight
    )


def valid_service_name(name: Any) -> bool:
    return isinstance(name, str) and bool(SERVICE_NAME_RE.match(name))


def show(value: Any, limit: int = 60) -> str:
    """repr() cut short: a 1 MB hostile tag must not become a 1 MB log line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} chars)"


def services_from_catalog(
    raw: Mapping[str, Any],
) -> Tuple[Tuple[Tuple[str, Tuple[str, ...]], ...], List[str]]:
    """/v1/catalog/services -> sorted (name, tags) pairs, and one warning per dropped service or tag.

    A service whose name is not a valid service name is dropped; so is a tag that is not a safe token
    (the service stays, without that tag).
    """
    services = []
    warnings = []
    for name, tags in raw.items():
        if not valid_service_name(name):
            warnings.append(f"services(): dropped service {show(name)}: not a valid service name")
            continue
        kept = []
        for tag in tags if isinstance(tags, list) else ():
            try:
                kept.append(safe_token(tag, "tag"))
            except Rejected as e:
                warnings.append(f"services(): service {show(name)}: dropped {e}")
        services.append((name, tuple(sorted(set(kept)))))
    return tuple(sorted(services)), warnings


def node_from_agent(raw: Mapping[str, Any]) -> Tuple[Tuple[str, str], ...]:
    """consul.local_node's answer -> (("name", ..), ("datacenter", ..), ("address", ..)), or Rejected."""
    return (
        ("name", safe_token(raw.get("name"), "node name")),
        ("datacenter", safe_token(raw.get("datacenter"), "datacenter")),
        ("address", check_address(raw.get("address"))),
    )
