"""The shortest safe drain: how long a stopping node waits before its application is asked to stop.

Once its services are deregistered, every other node drops this instance from its routing within
a propagation time, and nothing in the cluster says when that has happened everywhere. The
application's own listening ports say it: peers that still route here open new connections to
them, and a peer's HAProxy closes its (pooled) connections here once it has dropped the instance.
So the drain watches the kernel's table of TCP sockets of this network namespace (/proc/net/tcp
and /proc/net/tcp6, read as plain text) and its count of accepted connections (PassiveOpens in
/proc/net/snmp), and ends as soon as

- no new connection has arrived for `quiet` seconds: a connection to a watched port whose
  addresses were not in the previous reading, one waiting in a listening socket's accept queue,
  or any connection the namespace accepted since the previous reading (a peer's HAProxy may hold
  a connection here for only the millisecond of one request and then reset it, leaving nothing
  in the table for the next reading to see; the counter does not miss it, but it counts every
  port of the namespace, so in a shared one, e.g. a host's, the drain rarely goes quiet), and
- no connection to a watched port is open any more (established, half-open, or closed by the
  peer but not yet by the application),

or, whatever the sockets say, once `bound` seconds have passed. Reading the table costs no Consul
request, at any cluster size.

`parse` and `view` read the text, `step` decides; `watch` is the small loop around them.
"""

from __future__ import annotations

import ipaddress
import sys
import time
from dataclasses import dataclass
from typing import Callable, FrozenSet, Iterable, List, Optional, Sequence, Tuple

PROC_FILES = ("/proc/net/tcp", "/proc/net/tcp6")
SNMP_FILE = "/proc/net/snmp"
# Between readings. A reading itself takes a few to tens of milliseconds on a large machine: the
# kernel walks its whole connection hash table, whatever the namespace holds.
POLL_SECONDS = 0.01

# TCP states as the kernel numbers them (include/net/tcp_states.h).
ESTABLISHED, SYN_RECV, TIME_WAIT, CLOSE_WAIT, LISTEN = 0x01, 0x03, 0x06, 0x08, 0x0A
# Still the application's to finish: a request may be on its way or an answer still due. The
# others (FIN_WAIT*, LAST_ACK, CLOSING, TIME_WAIT) are closed on the application's side.
OPEN_STATES = frozenset((ESTABLISHED, SYN_RECV, CLOSE_WAIT))

ADDRESSES_END = 110  # the addresses end before this column, in tcp6 lines too
QUIET, FINISHED, BOUND = "quiet", "open connections finished", "upper bound reached"

Address = Tuple[str, int]


@dataclass(frozen=True)
class Socket:
    """One line of /proc/net/tcp or tcp6."""

    local: Address
    remote: Address
    state: int
    rx_queue: int  # on a listening socket: connections waiting in its accept queue


def _address(text: str) -> Address:
    """`0100007F:1F90` -> ('127.0.0.1', 8080). The kernel prints each 32-bit word of the address
    in the host's byte order, and the port in hex; IPv4-mapped IPv6 addresses come out as IPv4."""
    host, _, port = text.partition(":")
    words = bytes.fromhex(host)
    if sys.byteorder == "little":
        words = b"".join(words[i : i + 4][::-1] for i in range(0, len(words), 4))
    address = ipaddress.ip_address(words)
    # An IPv4 client of a dual-stack listener: named as IPv4, the same on every Python version.
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address), int(port, 16)


def parse(text: str, ports: Optional[FrozenSet[int]] = None) -> List[Socket]:
    """The sockets of one /proc/net/tcp or tcp6 text (only those with one of `ports` at either end,
    when given); its header and malformed lines are skipped."""
    # A host's table can hold tens of thousands of lines: look for the ports before splitting.
    needles = None if ports is None else tuple(f":{port:04X} " for port in ports)
    sockets = []
    for line in text.splitlines():
        if needles is not None and not any(n in line[:ADDRESSES_END] for n in needles):
            continue
        fields = line.split()
        if len(fields) < 5 or not fields[0].endswith(":"):
            continue
        try:
            queues = fields[4].partition(":")[2]
            sockets.append(
                Socket(_address(fields[1]), _address(fields[2]), int(fields[3], 16), int(queues, 16))
            )
        except ValueError:
            continue
    return sockets


@dataclass(frozen=True)
class View:
    """What one reading says about the watched ports."""

    connections: FrozenSet[Tuple[Address, Address]]  # (local, remote) of every connection to them
    open: int  # how many of those are still open (OPEN_STATES)
    backlog: int  # connections waiting in their listening sockets' accept queues
    # The namespace's count of connections accepted so far (PassiveOpens), on any port: None unknown.
    accepted: Optional[int] = None


def view(sockets: Iterable[Socket], ports: FrozenSet[int], accepted: Optional[int] = None) -> View:
    """The connections to `ports` (by local port: the application's side of them)."""
    connections, opened, backlog = set(), 0, 0
    for s in sockets:
        if s.local[1] not in ports:
            continue
        if s.state == LISTEN:
            backlog += s.rx_queue
            continue
        connections.add((s.local, s.remote))
        opened += s.state in OPEN_STATES
    return View(frozenset(connections), opened, backlog, accepted)


@dataclass(frozen=True)
class State:
    started: float
    last_new: float  # when a new connection was last seen (the drain's start counts as one)
    previous: FrozenSet[Tuple[Address, Address]]  # the connections of the previous reading
    accepted: Optional[int] = None  # the previous reading's PassiveOpens
    new: int = 0  # new connections seen during the drain
    waited_for_open: bool = False  # quiet came while connections were still open


def start(first: View, now: float) -> State:
    """The connections open when the drain starts are not new: they are what it waits to finish."""
    return State(started=now, last_new=now, previous=first.connections, accepted=first.accepted)


@dataclass(frozen=True)
class Outcome:
    seconds: float
    reason: str  # QUIET, FINISHED or BOUND
    new: int  # new connections seen during the drain
    open: int  # connections still open when it ended
    since_new: float  # seconds from the last new connection to the end


def step(
    state: State, current: View, now: float, quiet: float, bound: float
) -> Tuple[State, Optional[Outcome]]:
    """One reading: the next state, and the outcome once the drain is over."""
    seen = len(current.connections - state.previous)
    # Accepted anywhere in the namespace since the last reading: maybe on a watched port by a
    # connection too short-lived for the readings to catch, so it counts as one that arrived.
    accepted = 0
    if current.accepted is not None and state.accepted is not None:
        accepted = max(0, current.accepted - state.accepted)
    arrived = seen + accepted + current.backlog
    last_new = now if arrived else state.last_new
    is_quiet = now - last_new >= quiet
    still_open = current.open + current.backlog
    state = State(
        started=state.started,
        last_new=last_new,
        previous=current.connections,
        accepted=current.accepted if current.accepted is not None else state.accepted,
        new=state.new + max(seen, accepted),
        waited_for_open=state.waited_for_open or (is_quiet and still_open > 0),
    )
    if now - state.started >= bound:  # first: quiet at the bound is still the bound (a fixed drain)
        reason = BOUND
    elif is_quiet and still_open == 0:
        reason = FINISHED if state.waited_for_open else QUIET
    else:
        return state, None
    return state, Outcome(now - state.started, reason, state.new, still_open, now - last_new)


def read(ports: Optional[FrozenSet[int]] = None, files: Sequence[str] = PROC_FILES) -> List[Socket]:
    """The TCP sockets of this network namespace (those with one of `ports` at either end, when
    given); a missing file (no IPv6) is no socket. Raises OSError when none can be read."""
    sockets: List[Socket] = []
    readable = 0
    for path in files:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            continue
        readable += 1
        sockets += parse(text, ports)
    if not readable:
        raise OSError(f"none of {', '.join(files)} exists: cannot watch the application's connections")
    return sockets


def passive_opens(path: str = SNMP_FILE) -> Optional[int]:
    """The namespace's TCP PassiveOpens counter (connections accepted, any port); None if unreadable."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            rows = [line.split() for line in f if line.startswith("Tcp:")]
        return int(rows[1][rows[0].index("PassiveOpens")])
    except (OSError, IndexError, ValueError):
        return None


def reading(ports: FrozenSet[int]) -> View:
    """One reading of the kernel's tables for `ports`. Raises OSError as `read` does."""
    accepted = passive_opens()  # first: a connection accepted meanwhile is then in the sockets
    return view(read(ports), ports, accepted)


def watch(
    ports: Iterable[int],
    quiet: float,
    bound: float,
    reader: Optional[Callable[[], View]] = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> Outcome:
    """Drain: read the sockets every POLL_SECONDS until `step` says it is over. Raises OSError when
    the sockets cannot be read at the start (the caller then waits the whole bound)."""
    watched = frozenset(ports)
    reader = reader or (lambda: reading(watched))
    state = start(reader(), clock())
    while True:
        sleep(min(POLL_SECONDS, max(0.0, state.started + bound - clock())))
        try:
            current = reader()
        except OSError:
            current = View(state.previous, len(state.previous), 0)  # unknown: nothing has ended
        state, outcome = step(state, current, clock(), quiet, bound)
        if outcome is not None:
            return outcome


def describe(outcome: Outcome, quiet: float) -> str:
    """One log line: how long the drain took and why it ended."""
    text = f"drain ended after {outcome.seconds:.2f} s: {outcome.reason}"
    if outcome.reason == BOUND:
        return f"{text} ({outcome.open} connection(s) open, last new one {outcome.since_new:.2f} s before)"
    return f"{text} (no new connection for {quiet:g} s, none open; {outcome.new} new during the drain)"
