"""The shortest safe drain: how long a stopping node waits before its application is asked to stop.

Once its services are deregistered, every other node drops this instance from its routing within
a propagation time, and nothing in the cluster says when that has happened everywhere. The
application's own listening ports say it: peers that still route here open new connections to
them, and a peer's HAProxy closes its (pooled) connections here once it has dropped the instance.
So the drain watches the kernel's table of TCP sockets of this network namespace (/proc/net/tcp
and /proc/net/tcp6, read as plain text) and ends as soon as

- no new connection has arrived for `quiet` seconds (a connection to a watched port whose
  addresses were not in the previous reading, or one waiting in a listening socket's accept
  queue), and
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
# Between readings. A connection that opens and closes in between is not seen: a peer that still
# routes here sends more than one, and a request refused after the drain is retried elsewhere.
POLL_SECONDS = 0.01

# TCP states as the kernel numbers them (include/net/tcp_states.h).
ESTABLISHED, SYN_RECV, TIME_WAIT, CLOSE_WAIT, LISTEN = 0x01, 0x03, 0x06, 0x08, 0x0A
# Still the application's to finish: a request may be on its way or an answer still due. The
# others (FIN_WAIT*, LAST_ACK, CLOSING, TIME_WAIT) are closed on the application's side.
OPEN_STATES = frozenset((ESTABLISHED, SYN_RECV, CLOSE_WAIT))

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


def parse(text: str) -> List[Socket]:
    """The sockets of one /proc/net/tcp or tcp6 text; its header and malformed lines are skipped."""
    sockets = []
    for line in text.splitlines():
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


def view(sockets: Iterable[Socket], ports: FrozenSet[int]) -> View:
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
    return View(frozenset(connections), opened, backlog)


@dataclass(frozen=True)
class State:
    started: float
    last_new: float  # when a new connection was last seen (the drain's start counts as one)
    previous: FrozenSet[Tuple[Address, Address]]  # the connections of the previous reading
    new: int = 0  # new connections seen during the drain
    waited_for_open: bool = False  # quiet came while connections were still open


def start(first: View, now: float) -> State:
    """The connections open when the drain starts are not new: they are what it waits to finish."""
    return State(started=now, last_new=now, previous=first.connections)


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
    arrived = len(current.connections - state.previous) + current.backlog
    last_new = now if arrived else state.last_new
    is_quiet = now - last_new >= quiet
    still_open = current.open + current.backlog
    state = State(
        started=state.started,
        last_new=last_new,
        previous=current.connections,
        new=state.new + len(current.connections - state.previous),
        waited_for_open=state.waited_for_open or (is_quiet and still_open > 0),
    )
    if is_quiet and still_open == 0:
        reason = FINISHED if state.waited_for_open else QUIET
    elif now - state.started >= bound:
        reason = BOUND
    else:
        return state, None
    return state, Outcome(now - state.started, reason, state.new, still_open, now - last_new)


def read(files: Sequence[str] = PROC_FILES) -> List[Socket]:
    """Every TCP socket of this network namespace; a missing file (no IPv6) is no socket.
    Raises OSError when none of the files can be read."""
    sockets: List[Socket] = []
    readable = 0
    for path in files:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            continue
        readable += 1
        sockets += parse(text)
    if not readable:
        raise OSError(f"none of {', '.join(files)} exists: cannot watch the application's connections")
    return sockets


def watch(
    ports: Iterable[int],
    quiet: float,
    bound: float,
    reader: Callable[[], List[Socket]] = read,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> Outcome:
    """Drain: read the sockets every POLL_SECONDS until `step` says it is over. Raises OSError when
    the sockets cannot be read at the start (the caller then waits the whole bound)."""
    watched = frozenset(ports)
    state = start(view(reader(), watched), clock())
    while True:
        sleep(min(POLL_SECONDS, max(0.0, state.started + bound - clock())))
        try:
            current = view(reader(), watched)
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
