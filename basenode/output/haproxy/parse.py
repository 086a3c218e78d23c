"""Reading a rendered config: its skeleton (everything that needs a reload to change) and the
`server` lines of its backends (what the runtime API can change without one)."""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field
from itertools import accumulate, chain
from operator import add, attrgetter
from typing import Callable, Dict, FrozenSet, List, Optional, Tuple

from .runtime import syntax_in

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
    problem: str = ""  # why the runtime API cannot apply this line ("": it can)

    @property
    def runtime_ok(self) -> bool:
        return not self.problem


@dataclass(frozen=True)
class ParsedConfig:
    # A digest of every line but the backends' server lines: equal skeletons => runtime apply. A digest,
    # not the lines: a cached parse of a large config would otherwise keep every one of them alive.
    skeleton: bytes
    backends: Tuple[str, ...]
    servers: Dict[str, Dict[str, ServerLine]] = field(default_factory=dict)
    # Backends with `cookie ... dynamic`: HAProxy gives a server added at runtime its cookie only when
    # told to (`enable dynamic-cookie backend`).
    dynamic_cookies: FrozenSet[str] = frozenset()


@dataclass(frozen=True, eq=False)  # eq=False: compared by identity, which the memo's lookups need
class Piece:
    """What parse_config keeps of one piece of config (see split_sections): usually one section."""

    skeleton: bytes  # the digests of its sections' lines but their server lines
    backends: Tuple[str, ...]  # its backend and listen sections, in order
    servers: Tuple[Tuple[str, Dict[str, ServerLine]], ...]  # (backend, its server lines), in order
    dynamic_cookies: Tuple[str, ...]  # its backends with `cookie ... dynamic`


# One entry: the candidate applied now is the live text of the next apply, which then finds it
# here; the new candidate replaces it. A parsed config grows with the routes: keep only that one.
@functools.lru_cache(maxsize=1)
def parse_config(text: str) -> ParsedConfig:
    """Split a config into its skeleton and its backends' server lines. The result is shared (cached):
    treat it as read-only.

    A change to one route changes one or two of a thousand sections: each section's text is read
    once, and the next parse takes the sections it already knows from the last one (SectionMemo)."""
    return _MEMO.parse(text)


_SKELETON, _BACKENDS = attrgetter("skeleton"), attrgetter("backends")
_SERVERS, _COOKIES = attrgetter("servers"), attrgetter("dynamic_cookies")


class SectionMemo:
    """The pieces of the last config parsed, by their text; a parse reads only the new ones.

    The rest is put together with map() and join(), not a Python loop per piece: at 1,000 routes the
    loop would cost more than reading the one piece that changed."""

    def __init__(self) -> None:
        self._known: Dict[str, Piece] = {}
        self._chunks: List[str] = []  # the last text's pieces, in order
        self._starts: List[int] = []  # where each begins in it
        self._pieces: List[Piece] = []
        self._length = 0

    def parse(self, text: str) -> ParsedConfig:
        import hashlib  # here, not at the top: PID 1 imports this package and must not load OpenSSL

        i, j, chunks = self._split(text)
        known = self._known.get
        middle = [known(chunk) or _read_piece(chunk) for chunk in chunks[i : len(chunks) - j]]
        pieces = [*self._pieces[:i], *middle, *self._pieces[len(self._pieces) - j :]]
        lengths = list(map(len, chunks))
        self._known = dict(zip(chunks, pieces))
        self._chunks, self._pieces, self._length = chunks, pieces, len(text)
        self._starts = [0, *accumulate(lengths[:-1])]
        skeleton = hashlib.blake2b(b"".join(map(_SKELETON, pieces)), digest_size=16)
        backends = tuple(chain.from_iterable(map(_BACKENDS, pieces)))
        # Shared with the memo, not copied: 5,000 servers would be copied on every parse otherwise.
        servers = dict(chain.from_iterable(map(_SERVERS, pieces)))
        if len(servers) < len(backends):  # a backend named twice: the server lines of both
            servers = {}
            for name, lines in chain.from_iterable(map(_SERVERS, pieces)):
                servers[name] = {**servers[name], **lines} if name in servers else lines
        cookies = frozenset(chain.from_iterable(map(_COOKIES, pieces)))
        return ParsedConfig(skeleton.digest(), backends, servers, cookies)

    def _split(self, text: str) -> Tuple[int, int, List[str]]:
        """split_sections(text), as (i, j, pieces): its first i and last j pieces are the last text's.

        Only what lies between them is split again: the pieces the last text begins and ends with are
        compared where they stood (startswith at an offset copies nothing), and each cut between
        what is kept and what is split must still be a cut in the new text."""
        last, starts, n = self._chunks, self._starts, len(self._chunks)
        i = 0
        while i < n - 1 and text.startswith(last[i], starts[i]):
            if not _SECTION_CUT.match(text, starts[i + 1] - 1):
                break
            i += 1
        begin = starts[i] if i else 0
        shift = len(text) - self._length  # where the last text's end pieces stand in this one
        j = n
        while j - 1 >= max(i, 1):
            at = starts[j - 1] + shift
            if at - 1 < begin or not text.startswith(last[j - 1], at) or not _SECTION_CUT.match(text, at - 1):
                break
            j -= 1
        end = starts[j] + shift if j < n else len(text)
        if begin > end:
            return 0, 0, split_sections(text)
        return i, n - j, [*last[:i], *split_sections(text[begin:end]), *last[j:]]


_MEMO = SectionMemo()

# Where split_sections cuts: after the newline before a line that starts with a section keyword
# followed by a space (or the end), which _read_piece always takes as opening a section. A section
# opened otherwise (an indented keyword) is not cut at but found inside its piece, so a parse in
# pieces equals a parse at once. The newline is captured, to stay at the end of its piece: the
# pieces put together are the text, line breaks (and empty lines) included.
_SECTION_CUT = re.compile(r"(\n)(?=(?:" + "|".join(sorted(SECTIONS)) + r")(?!\S))")


def split_sections(text: str) -> List[str]:
    """The text in pieces, each but the first starting with a line that opens a section."""
    parts = _SECTION_CUT.split(text)  # piece, "\n", piece, "\n", ..., piece
    return [*map(add, parts[0:-1:2], parts[1::2]), parts[-1]]


def _line(raw: str) -> str:
    """A line without its comment (unless it quotes or escapes anything) and the spaces around it."""
    return raw.split("#", 1)[0].strip() if "#" in raw and not _quoted(raw) else raw.strip()


def _read_piece(text: str) -> Piece:
    """The sections a piece of config opens (and the lines before the first, if any)."""
    import hashlib

    digests: List[bytes] = []
    backends: List[Tuple[str, Dict[str, ServerLine]]] = []
    cookies: List[str] = []
    keyword, name, lines = "", "", 0
    skeleton = hashlib.blake2b(digest_size=16)
    servers: Dict[str, ServerLine] = {}
    for raw in text.splitlines():
        line = _line(raw)
        words = line.split()
        in_backend = keyword in BACKEND_SECTIONS
        if words and words[0] in SECTIONS:
            if keyword or lines:  # the lines before the first section count only if there are any
                digests.append(skeleton.digest())
            keyword, name = words[0], (words[1] if len(words) > 1 else "")
            skeleton, servers = hashlib.blake2b(digest_size=16), {}
            if keyword in BACKEND_SECTIONS:
                backends.append((name, servers))
        elif in_backend and len(words) >= 3 and words[0] == "server" and not _quoted(raw):
            server = _server_line(name, line)
            servers[server.name] = server
            continue
        elif in_backend and words[:1] == ["cookie"] and "dynamic" in words[2:]:
            cookies.append(name)
        skeleton.update(line.encode() + b"\n")
        lines += 1
    if keyword or lines:
        digests.append(skeleton.digest())
    return Piece(b"".join(digests), tuple(b for b, _ in backends), tuple(backends), tuple(cookies))


def _quoted(raw: str) -> bool:
    return any(c in raw for c in "\"'\\")


# A change touches a few server lines and leaves the others as they were: each distinct line is read
# (validated, its address parsed) once, not again on every apply. Sized for 5,000 routes x 5 instances.
@functools.lru_cache(maxsize=32768)
def _server_line(backend: str, line: str) -> ServerLine:
    words = line.split()
    name, endpoint, rest = words[1], words[2], words[3:]
    weight, options = 1, []
    problem = ""
    i = 0
    while i < len(rest):
        if rest[i] == "weight":
            value = rest[i + 1] if i + 1 < len(rest) else ""
            if _digits(value) and int(value) <= MAX_WEIGHT:
                weight = int(value)
            else:
                problem = problem or f"weight {value!r} is not 0-{MAX_WEIGHT}"
            i += 2
            continue
        options.append(rest[i])
        i += 1
    address, port = _split_endpoint(endpoint)
    hazard = syntax_in(" ".join(words))
    if hazard:
        problem = f"it holds {hazard}"  # never sent to the admin socket (runtime.command refuses it too)
    elif address is None or port is None:
        # Dynamic servers are never resolved by name (2.6 initialises them with init-addr none).
        problem = f"address {endpoint!r} is not an IP address and port"
    elif not _NAME.match(backend) or not _NAME.match(name):
        problem = f"name {backend}/{name} has characters HAProxy does not allow"
    else:
        problem = problem or _options_problem(options)
    return ServerLine(backend, name, address, port, weight, tuple(options), tuple(words[2:]), problem)


def _options_problem(options: List[str]) -> str:
    """Why the runtime API should not be given these options ("" when they are all known and valid).

    What basenode checks itself, so that a server change needs no `haproxy -c`: only keywords
    `add server` takes (HAProxy 2.6's dynamic server keywords), each with a value of the right form.
    Anything else is left to `haproxy -c` and a reload.
    """
    i = 0
    while i < len(options):
        keyword = options[i]
        if keyword in _FLAGS:
            i += 1
            continue
        check = _VALUED.get(keyword)
        if check is None:
            # "disabled" is known but would fight with the `state ready` that follows `add server`.
            return f"option {keyword!r} is not one basenode applies through the runtime API"
        value = options[i + 1] if i + 1 < len(options) else ""
        if not check(value):
            return f"option {keyword} {value!r}: not a valid value"
        i += 2
    return ""


def _number(low: int, high: int) -> Callable[[str], bool]:
    def valid(value: str) -> bool:
        digits = value[1:] if value.startswith("-") else value
        return _digits(digits) and low <= int(value) <= high

    return valid


def _one_of(*choices: str) -> Callable[[str], bool]:
    return frozenset(choices).__contains__


def _time(value: str) -> bool:
    return bool(_TIME.match(value))


def _pattern(regex: str) -> Callable[[str], bool]:
    compiled = re.compile(regex)

    def valid(value: str) -> bool:
        return compiled.match(value) is not None

    return valid


_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"  # a DNS host name


MAX_WEIGHT = 256
_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")  # HAProxy's identifier characters
_TIME = re.compile(r"^[0-9]{1,9}(us|ms|s|m|h|d)?$")
_FLAGS = frozenset(
    (
        "backup", "no-backup", "check", "agent-check", "check-send-proxy", "send-proxy", "send-proxy-v2",
        "no-send-proxy", "no-send-proxy-v2", "tfo", "no-tfo", "enabled", "ssl", "no-ssl", "check-ssl",
    )
)  # fmt: skip
_COUNT = _number(0, 1_000_000)
_PORT = _number(1, 65535)
_VALUED: Dict[str, Callable[[str], bool]] = {
    "maxconn": _COUNT,
    "maxqueue": _COUNT,
    "minconn": _COUNT,
    "rise": _number(1, 1000),
    "fall": _number(1, 1000),
    "error-limit": _number(1, 1000),
    "pool-max-conn": _number(-1, 1_000_000),
    "pool-low-conn": _COUNT,
    "id": _number(1, 1_000_000),
    "port": _PORT,
    "agent-port": _PORT,
    "inter": _time,
    "fastinter": _time,
    "downinter": _time,
    "agent-inter": _time,
    "slowstart": _time,
    "pool-purge-delay": _time,
    "observe": _one_of("layer4", "layer7"),
    "on-error": _one_of("fastinter", "fail-check", "sudden-death", "mark-down"),
    "on-marked-down": _one_of("shutdown-sessions"),
    "on-marked-up": _one_of("shutdown-backup-sessions"),
    "ws": _one_of("auto", "h1", "h2"),
    "proto": _one_of("h1", "h2", "fcgi", "none"),
    "verify": _one_of("none", "required"),
    "ca-file": _pattern(r"^/[A-Za-z0-9._/+@-]{1,1023}\Z"),  # a file HAProxy loaded with the config
    "sni": _pattern(r"^str\(" + _HOST + r"\)\Z"),  # only a fixed name, never a sample expression
    "check-sni": _pattern(r"^" + _HOST + r"\Z"),
}


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes "²", which int() refuses (and HAProxy would)."""
    return text.isascii() and text.isdigit()


def _split_endpoint(endpoint: str) -> Tuple[Optional[str], Optional[int]]:
    if endpoint.startswith("["):
        host, sep, port = endpoint[1:].partition("]:")
    else:
        host, sep, port = endpoint.rpartition(":")
    if not sep or not _digits(port) or not 1 <= int(port) <= 65535:
        return None, None
    try:
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        return None, int(port)
