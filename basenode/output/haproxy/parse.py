"""Reading a rendered config: its skeleton (everything that needs a reload to change) and the
`server` lines of its backends (what the runtime API can change without one)."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

# Section keywords of an HAProxy config file; a line starting with one opens a new section.
SECTIONS = frozenset(
    (
        "global", "defaults", "frontend", "backend", "listen", "resolvers", "peers", "userlist",
        "mailers", "program", "http-errors", "ring", "cache", "fcgi-app", "dynamic-update",
    )
)  # fmt: skip
BACKEND_SECTIONS = ("backend", "listen")


@dataclass(frozen=True)
class ServerLine:
    """A `server` line of a backend, split into what the runtime API can set and the rest."""

    backend: str
    name: str
    address: Optional[str]  # normalised IP; None when the line names a host or anything unusual
    port: Optional[int]
    weight: int
    options: Tuple[str, ...]  # every argument except the address and "weight N"
    args: Tuple[str, ...]  # the arguments after the name, as written (for `add server`)

    @property
    def runtime_ok(self) -> bool:
        # Dynamic servers are never resolved by name (2.6 initialises them with init-addr none), and
        # "disabled" would fight with our enable.
        return self.address is not None and self.port is not None and "disabled" not in self.options


@dataclass(frozen=True)
class ParsedConfig:
    # A digest of every line but the backends' server lines: equal skeletons => runtime apply. A digest,
    # not the lines: at 1,000 routes the lines alone would keep ~1.5 MB alive per cached parse.
    skeleton: bytes
    backends: Tuple[str, ...]
    servers: Dict[str, Dict[str, ServerLine]] = field(default_factory=dict)


# One entry: the candidate applied now is the live text of the next apply, which then finds it
# here; the new candidate replaces it. At 1,000 routes a parsed config weighs ~4 MB.
@functools.lru_cache(maxsize=1)
def parse_config(text: str) -> ParsedConfig:
    """Split a config into its skeleton and its backends' server lines. The result is shared (cached):
    treat it as read-only."""
    import hashlib  # here, not at the top: PID 1 imports this package and must not load OpenSSL

    skeleton = hashlib.blake2b(digest_size=16)
    backends: List[str] = []
    servers: Dict[str, Dict[str, ServerLine]] = {}
    section, name = "", ""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip() if "#" in raw and not _quoted(raw) else raw.strip()
        words = line.split()
        if words and words[0] in SECTIONS:
            section, name = words[0], (words[1] if len(words) > 1 else "")
            if section in BACKEND_SECTIONS:
                backends.append(name)
                servers.setdefault(name, {})
        elif section in BACKEND_SECTIONS and len(words) >= 3 and words[0] == "server" and not _quoted(raw):
            server = _server_line(name, words)
            servers[name][server.name] = server
            continue
        skeleton.update(line.encode() + b"\n")
    return ParsedConfig(skeleton.digest(), tuple(backends), servers)


def _quoted(raw: str) -> bool:
    return any(c in raw for c in "\"'\\")


def _server_line(backend: str, words: List[str]) -> ServerLine:
    name, endpoint, rest = words[1], words[2], words[3:]
    weight, options = 1, []
    i = 0
    while i < len(rest):
        if rest[i] == "weight" and i + 1 < len(rest) and rest[i + 1].isdigit():
            weight = int(rest[i + 1])
            i += 2
            continue
        options.append(rest[i])
        i += 1
    address, port = _split_endpoint(endpoint)
    return ServerLine(backend, name, address, port, weight, tuple(options), tuple(words[2:]))


def _split_endpoint(endpoint: str) -> Tuple[Optional[str], Optional[int]]:
    if endpoint.startswith("["):
        host, sep, port = endpoint[1:].partition("]:")
    else:
        host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        return None, None
    try:
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        return None, int(port)
