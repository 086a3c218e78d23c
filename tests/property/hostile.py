"""Hypothesis strategies for what a cluster may put in Consul: routes in KV and service registrations.

Every strategy mixes values basenode must route (the common case, so that each example proves
presence as well as absence) with values Consul accepts but no config file should ever see:
control characters, whitespace, quotes and `#`, unicode, over-long strings, IPv6 zone indexes,
`host:port` in an address field, ports outside 1-65535, weights outside 0-256, names made of dots.
The data here is plain: what the test registers, not what basenode makes of it (that is oracle.py).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, replace
from typing import Optional, Tuple

from hypothesis import strategies as st

TOKEN_ALPHABET = string.ascii_letters + string.digits + "._:/@%+=,~-"
NAME_ALPHABET = string.ascii_letters + string.digits + "._-"

# Values that broke, or could break, a config file or a Consul read; each is tried on every field.
NASTY = (
    "",
    " ",
    "\n",
    "\r\n",
    "\t",
    "#",
    "a b",
    "a\nb",
    "x\n    server evil 192.0.2.66:80",
    "x\n}\nbackend evil",
    '"',
    "'",
    "\\",
    ";",
    "{{ x }}",
    "{% raw %}",
    "\x00",
    "\x7f",
    "é",
    "☃",
    "\u2028",
    "\u200b",
    "ｗｅｂ",  # noqa: RUF001 - fullwidth letters on purpose
    "٨٠",  # Arabic-Indic digits, which int() takes for 80
)
SUFFIXES = ("\n", " ", "\t", "#x", " backup", "\n    server evil 192.0.2.66:80", "é")

ADDRESSES = (
    "",  # empty: the node's address is used
    "127.0.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "::1",
    "::",
    "fd00::5",
    "FD00:0:0::5",
    "::ffff:192.0.2.1",
    "fe80::1%eth0",
    "fe80::1%x y",
    "fe80::1%x\n    server evil 192.0.2.66:80",
    "01.2.3.4",
    "1.2.3",
    "192.0.2.1:80",
    "192.0.2.1 backup",
    "[::1]",
    "[::1]:80",
    "localhost",
    "web.example.internal",
    "Web.Example.Internal",
    "web.example.internal.",
    "web.example.internal\n",
    "-web.example",
    "web-.example",
    "a..b",
    "a" * 63 + ".example",
    "a" * 64 + ".example",
    ".".join(["a" * 63] * 4),
    "web_1.example",
    "wéb.example",
)


@dataclass(frozen=True)
class Node:
    name: str
    address: str


@dataclass(frozen=True)
class Registration:
    """One service instance as the test registers it (`via` the catalog on `node`, or the agent)."""

    via: str  # "catalog" | "agent"
    node: int  # index into Example.nodes (catalog only)
    id: str
    address: str
    port: int
    tags: Tuple[str, ...]
    meta: Tuple[Tuple[str, str], ...]
    weight: Optional[int]  # Weights.Passing; None: not sent
    status: Optional[str]  # the check's status; None: no check


@dataclass(frozen=True)
class RouteSpec:
    """A KV route `basenode/routes/<name>` = `<port>[/<mode>][ tag=<tag>]`, and the instances of <name>."""

    name: str
    port: int
    mode: str  # "" (omitted: tcp) or what follows the slash
    tag: Optional[str]
    instances: Tuple[Registration, ...]

    @property
    def value(self) -> str:
        text = str(self.port) + (f"/{self.mode}" if self.mode else "")
        return text + (f" tag={self.tag}" if self.tag is not None else "")


@dataclass(frozen=True)
class Example:
    nodes: Tuple[Node, ...]
    routes: Tuple[RouteSpec, ...]


def spoilt(valid: st.SearchStrategy[str], limit: int) -> st.SearchStrategy[str]:
    """A valid value with a nasty suffix, a nasty value, any short text, or a token one too long."""
    suffixed = st.tuples(valid, st.sampled_from(SUFFIXES)).map("".join)
    too_long = st.text(alphabet=TOKEN_ALPHABET, min_size=limit + 1, max_size=limit + 8)
    return st.one_of(suffixed, st.sampled_from(NASTY), st.text(max_size=12), too_long)


THREE_IN_FOUR = st.sampled_from([True, True, True, False])


@st.composite
def mostly(draw: st.DrawFn, valid: st.SearchStrategy, other: st.SearchStrategy) -> st.SearchStrategy:
    """`valid` 3 times in 4, else `other` (one_of(a, a, a, b) would not do: it draws a as often as b)."""
    return draw(valid if draw(THREE_IN_FOUR) else other)


def hostile(valid: st.SearchStrategy[str], limit: int) -> st.SearchStrategy[str]:
    """Mostly `valid`, else spoilt."""
    return mostly(valid, spoilt(valid, limit))


def tokens(size: int = 12) -> st.SearchStrategy[str]:
    return st.text(alphabet=TOKEN_ALPHABET, min_size=1, max_size=size)


# Each field has the values basenode must route (`valid_*`) and anything Consul may hold (`any_*`).
# Node names and IDs come from a small pool as often as not, so that examples often share them: two
# instances whose node and ID differ but join to the same server name are then likely, not a rare draw.
valid_node_names = st.one_of(st.sampled_from(["n", "n_a", "node1", "node-2.dc"]), tokens())
valid_service_ids = st.one_of(st.sampled_from(["a_b", "b", "web-1", "web/1", "id@x"]), tokens())
valid_service_names = st.text(alphabet=NAME_ALPHABET, min_size=1, max_size=16)
any_service_names = st.one_of(
    st.sampled_from([".", "..", "...", "-", "_", "n" * 128, "n" * 129, "a/b", "web\n", "web ", "wéb", "a?b"]),
    st.sampled_from(NASTY),
    st.text(max_size=8),
)
ALNUM = string.ascii_letters + string.digits
# An RFC 1123 label: letters, digits and inner hyphens (built, not filtered or regex-drawn: cheaper).
labels = st.tuples(
    st.sampled_from(ALNUM), st.text(alphabet=ALNUM + "-", max_size=8), st.sampled_from(ALNUM)
).map(lambda t: f"{t[0]}{t[1]}{t[2]}" if t[1] else t[0])
hostnames = st.lists(labels, min_size=1, max_size=3).map(".".join)
valid_addresses = st.one_of(
    st.sampled_from(
        ["", "127.0.0.1", "::1", "fd00::5", "FD00:0:0::5", "::ffff:192.0.2.1", "0.0.0.0", "1.2.3"]
    ),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    hostnames,
)
any_addresses = st.one_of(
    st.sampled_from(ADDRESSES),
    st.tuples(hostnames, st.sampled_from(SUFFIXES)).map("".join),
    st.text(max_size=12),
)
valid_ports = st.integers(1, 65535)
any_ports = st.sampled_from([0, -1, 65536, 2**31, 2**40])
valid_weights = st.one_of(st.none(), st.integers(1, 256))
any_weights = st.sampled_from([-1, 0, 257, 1000])
statuses = st.sampled_from([None, None, None, "passing", "passing", "warning", "critical"])
# Consul refuses meta keys outside [A-Za-z0-9_-] (the registration then fails as a whole): both kinds.
valid_meta_keys = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=8)
valid_tags = tokens()
any_tags = spoilt(tokens(), 256)
valid_metas = st.dictionaries(valid_meta_keys, valid_tags, max_size=2)
any_metas = st.dictionaries(st.one_of(valid_meta_keys, tokens()), any_tags, min_size=1, max_size=2)

# field -> (values basenode must route, values Consul may hold that it must not)
FIELDS = {
    "id": (valid_service_ids, spoilt(valid_service_ids, 256)),
    "address": (valid_addresses, any_addresses),
    "port": (valid_ports, any_ports),
    "tags": (st.lists(valid_tags, max_size=2), st.lists(any_tags, min_size=1, max_size=2)),
    "meta": (valid_metas, any_metas),
    "weight": (valid_weights, any_weights),
}


KINDS = st.sampled_from(["clean", "clean", "clean", "one", "one", "several"])
ONE_FIELD = st.sampled_from(sorted(FIELDS))
SEVERAL_FIELDS = st.lists(ONE_FIELD, min_size=2, max_size=4)
VIA = st.sampled_from(["catalog", "catalog", "catalog", "agent"])
NODE_INDEX = st.integers(0, 1)


@st.composite
def registrations(draw: st.DrawFn) -> Registration:
    """An instance: every value routable (3 in 6), one field spoiled (2 in 6), or several (1 in 6).

    One spoiled field at a time proves each check on its own; a check that lets a value through is then
    the only reason the example fails. Route_specs adds the route's tag and picks the node.
    """
    kind = draw(KINDS)
    spoiled = (
        {draw(ONE_FIELD)} if kind == "one" else set(draw(SEVERAL_FIELDS)) if kind == "several" else set()
    )
    values = {field: draw(FIELDS[field][field in spoiled]) for field in FIELDS}
    return Registration(
        via=draw(VIA),
        node=draw(NODE_INDEX),
        id=values["id"],
        address=values["address"],
        port=values["port"],
        tags=tuple(values["tags"]),
        meta=tuple(values["meta"].items()),
        weight=values["weight"],
        status=draw(statuses),
    )


# Ports from a pair as often as not, so that two routes of an example often clash.
CLEAN_PORTS = st.one_of(st.sampled_from([9000, 9001]), valid_ports)
ANY_PORTS = st.one_of(CLEAN_PORTS, any_ports)
CLEAN_MODES = st.sampled_from(["", "tcp", "http"])
ANY_MODES = st.sampled_from(["", "tcp", "http", "udp", "HTTP"])
CLEAN_ROUTE_TAGS = mostly(st.none(), tokens(8))
ANY_ROUTE_TAGS = mostly(st.none(), st.one_of(tokens(8), st.sampled_from(["a b", "a\nb", "#x", "é", "x;y"])))
CARRIES_TAG = st.sampled_from([True, True, False])
INSTANCE_LISTS = st.lists(registrations(), min_size=1, max_size=4)


@st.composite
def route_specs(draw: st.DrawFn, name: str, nodes: int) -> RouteSpec:
    """A route with a usable port, mode and tag (3 in 4), else any; and its instances."""
    clean = draw(THREE_IN_FOUR)
    port = draw(CLEAN_PORTS if clean else ANY_PORTS)
    mode = draw(CLEAN_MODES if clean else ANY_MODES)
    tag = draw(CLEAN_ROUTE_TAGS if clean else ANY_ROUTE_TAGS)
    instances = []
    for instance in draw(INSTANCE_LISTS):
        tags = instance.tags + ((tag,) if tag is not None and draw(CARRIES_TAG) else ())
        instances.append(replace(instance, node=instance.node % nodes, tags=tags))
    return RouteSpec(name=name, port=port, mode=mode, tag=tag, instances=tuple(instances))


VALID_NODE_ADDRESSES = valid_addresses.filter(bool)
ANY_NODE_NAMES = hostile(valid_node_names, 256)


@st.composite
def nodes(draw: st.DrawFn) -> Node:
    """A node with a usable name and address (3 in 4), else any."""
    if draw(THREE_IN_FOUR):
        return Node(draw(valid_node_names), draw(VALID_NODE_ADDRESSES))
    return Node(draw(ANY_NODE_NAMES), draw(any_addresses))


NODE_LISTS = st.lists(nodes(), min_size=1, max_size=2, unique_by=lambda n: n.name.lower())
NAME_LISTS = st.lists(mostly(valid_service_names, any_service_names), min_size=1, max_size=3, unique=True)


@st.composite
def examples(draw: st.DrawFn) -> Example:
    node_list = draw(NODE_LISTS)
    routes = tuple(draw(route_specs(name, len(node_list))) for name in draw(NAME_LISTS))
    return Example(nodes=tuple(node_list), routes=routes)
