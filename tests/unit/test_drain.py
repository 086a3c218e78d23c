"""The drain's reading of the kernel's socket table, and its decision, on recorded /proc text.

tests/unit/data/proc_net_tcp*.txt were recorded on Linux (little-endian) with a listener on
127.0.0.1:18080 (accept backlog 2: connections from ports 0xA222 and 0xA22C not yet accepted),
connections to it from 0xA20C and 0xA21C (accepted, open), from 0xA22C (closed by its client:
CLOSE_WAIT) and from 0xA210 (closed by the server: TIME_WAIT); and a dual-stack listener on
[::]:18081 with one connection over ::1 and one IPv4 client (::ffff:127.0.0.1). Each client's own
side of these connections (local ephemeral port, remote 18080/18081) is in the text as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import pytest

from basenode import drain

DATA = Path(__file__).parent / "data"
TCP = (DATA / "proc_net_tcp.txt").read_text()
TCP6 = (DATA / "proc_net_tcp6.txt").read_text()
PORTS = frozenset((18080, 18081))
LOCAL4 = ("127.0.0.1", 18080)


def test_ipv4_lines_are_decoded_to_addresses_ports_states_and_queues():
    sockets = drain.parse(TCP)
    listener = [s for s in sockets if s.state == drain.LISTEN]
    assert listener == [drain.Socket(LOCAL4, ("0.0.0.0", 0), drain.LISTEN, 2)]
    assert drain.Socket(LOCAL4, ("127.0.0.1", 0xA22C), drain.CLOSE_WAIT, 1) in sockets
    assert drain.Socket(LOCAL4, ("127.0.0.1", 0xA210), drain.TIME_WAIT, 0) in sockets
    assert len(sockets) == 11  # every line but the header


def test_ipv6_lines_are_decoded_including_ipv4_mapped_clients():
    sockets = drain.parse(TCP6)
    assert sockets[0] == drain.Socket(("::", 18081), ("::", 0), drain.LISTEN, 0)
    served = {s.remote for s in sockets if s.local[1] == 18081 and s.state != drain.LISTEN}
    assert served == {("127.0.0.1", 0xA308), ("::1", 0x9B92)}  # ::ffff:127.0.0.1 named as IPv4


def test_the_view_counts_only_the_applications_side_of_connections_to_its_ports():
    v = drain.view(drain.parse(TCP) + drain.parse(TCP6), PORTS)
    remotes = {remote for _, remote in v.connections}
    # Five connections to 18080 (TIME_WAIT included: it was a connection) and two to 18081; the
    # clients' own sockets (remote port 18080/18081) are not the application's.
    assert len(v.connections) == 7
    assert ("127.0.0.1", 0xA210) in remotes and ("::1", 0x9B92) in remotes
    assert all(local[1] in PORTS for local, _ in v.connections)
    # Open: the four to 18080 that are not in TIME_WAIT (one of them CLOSE_WAIT) and both to 18081.
    assert v.open == 6
    assert v.backlog == 2


def test_ports_not_watched_are_ignored():
    assert drain.view(drain.parse(TCP), frozenset((18081,))) == drain.View(frozenset(), 0, 0)


def test_parsing_for_some_ports_keeps_every_socket_with_them_at_either_end():
    for text in (TCP, TCP6):
        every = drain.parse(text)
        wanted = [s for s in every if 18081 in (s.local[1], s.remote[1])]
        assert drain.parse(text, frozenset((18081,))) == wanted
    assert len(drain.parse(TCP, frozenset((18081,)))) == 1  # the IPv4 client's own side
    assert drain.parse(TCP, frozenset((9,))) == []


def test_malformed_lines_are_skipped_not_fatal():
    text = TCP.splitlines()[0] + "\n  0: garbage here 0A 00:00\n   1: 0100007F:ZZZZ 00000000:0000 0A 0:0\n"
    assert drain.parse(text) == []


def conn(port: int) -> tuple:
    return (LOCAL4, ("10.0.0.9", port))


def reading(*ports: int, open_: int = -1, backlog: int = 0) -> drain.View:
    connections = frozenset(conn(p) for p in ports)
    return drain.View(connections, len(connections) if open_ < 0 else open_, backlog)


def run(readings: List[drain.View], every: float = 0.1, quiet: float = 0.5, bound: float = 10.0):
    """Feed readings `every` seconds apart (the last one repeats); the outcome."""
    state = drain.start(readings[0], 0.0)
    t = 0.0
    for i in range(10000):
        t = round(t + every, 6)
        state, outcome = drain.step(state, readings[min(i + 1, len(readings) - 1)], t, quiet, bound)
        if outcome is not None:
            return outcome
    raise AssertionError("the drain never ended")


def test_no_traffic_at_all_ends_the_drain_after_the_quiet_period():
    outcome = run([reading()])
    assert (outcome.reason, outcome.seconds, outcome.new) == (drain.QUIET, 0.5, 0)


def test_each_new_connection_restarts_the_quiet_period():
    # New connections (new remote ports) at 0.1 .. 0.4 s, each closed by the next reading.
    outcome = run([reading(), reading(1), reading(2), reading(3), reading(4), reading()])
    assert outcome.reason == drain.QUIET
    assert outcome.seconds == pytest.approx(0.4 + 0.5)
    assert outcome.new == 4


def test_a_connection_open_at_the_start_is_waited_for_but_is_not_new():
    # Open from the start until 2 s: the quiet period passed long before, the drain waits for it.
    readings = [reading(7)] * 20 + [reading()]
    outcome = run(readings)
    assert (outcome.reason, outcome.seconds, outcome.new) == (drain.FINISHED, 2.0, 0)


def test_a_connection_closed_within_the_quiet_period_ends_it_as_quiet():
    outcome = run([reading(7), reading(7), reading()])
    assert (outcome.reason, outcome.seconds) == (drain.QUIET, 0.5)


def test_a_connection_in_the_accept_queue_counts_as_new_and_open():
    readings = [reading()] + [reading(backlog=1)] * 8 + [reading()]
    outcome = run(readings)
    assert outcome.reason == drain.QUIET
    assert outcome.seconds == pytest.approx(0.8 + 0.5)


def test_a_connection_the_namespace_accepted_between_readings_counts_as_new():
    # Too short-lived to be in any reading, but PassiveOpens went up: at 0.3 s, then never again.
    counts = [10, 10, 10, 11, 11]
    readings = [drain.View(frozenset(), 0, 0, n) for n in counts]
    outcome = run(readings)
    assert outcome.reason == drain.QUIET
    assert outcome.seconds == pytest.approx(0.3 + 0.5)
    assert outcome.new == 1


def test_an_unknown_accept_count_is_no_arrival():
    readings = [drain.View(frozenset(), 0, 0, 5), drain.View(frozenset(), 0, 0, None)]
    assert run(readings).seconds == pytest.approx(0.5)


def test_the_accept_count_is_read_from_proc_net_snmp(tmp_path):
    snmp = tmp_path / "snmp"
    snmp.write_text(
        "Ip: Forwarding DefaultTTL\nIp: 1 64\n"
        "Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails\n"
        "Tcp: 1 200 120000 -1 57 1234 3\n"
    )
    assert drain.passive_opens(str(snmp)) == 1234
    assert drain.passive_opens(str(tmp_path / "none")) is None
    assert isinstance(drain.passive_opens(), int)  # this machine's own


def test_a_closed_connection_lingering_in_time_wait_is_not_open():
    outcome = run([reading(), reading(5, open_=0)])
    assert (outcome.reason, outcome.seconds, outcome.open) == (drain.QUIET, 0.6, 0)


def test_the_upper_bound_always_wins():
    held = run([reading(7)], bound=3.0)
    assert (held.reason, held.seconds, held.open) == (drain.BOUND, 3.0, 1)
    busy = run([reading(i) for i in range(1000)], bound=2.0)  # a new connection every reading
    assert (busy.reason, busy.seconds) == (drain.BOUND, 2.0)
    short = run([reading()], quiet=5.0, bound=1.0)  # quiet longer than the bound: a fixed drain
    assert (short.reason, short.seconds) == (drain.BOUND, 1.0)
    same = run([reading()], quiet=1.0, bound=1.0)  # quiet as long as the bound: still a fixed drain
    assert (same.reason, same.seconds) == (drain.BOUND, 1.0)


def test_the_loop_reads_until_the_decision_and_reports_it():
    texts = iter([TCP, TCP, ""] + [""] * 100)
    clock = iter(range(0, 1000))
    outcome = drain.watch(
        PORTS,
        quiet=3,
        bound=50,
        reader=lambda: drain.view(drain.parse(next(texts)), PORTS),
        clock=lambda: float(next(clock)),
        sleep=lambda _s: None,
    )
    # Six connections open in the first two readings; all gone in the third, and nothing new since
    # the start: quiet as soon as three seconds have passed.
    assert outcome.reason == drain.QUIET and outcome.new == 0


def test_an_unreadable_table_mid_drain_ends_nothing_before_the_bound():
    calls = iter(
        [lambda: drain.view(drain.parse(TCP), PORTS)] + [lambda: (_ for _ in ()).throw(OSError("gone"))] * 100
    )
    clock = iter(range(0, 1000))
    outcome = drain.watch(
        PORTS,
        quiet=1,
        bound=5,
        reader=lambda: next(calls)(),
        clock=lambda: float(next(clock)),
        sleep=lambda _s: None,
    )
    assert outcome.reason == drain.BOUND


def test_without_proc_files_reading_raises():
    with pytest.raises(OSError):
        drain.read(files=("/nonexistent/tcp", "/nonexistent/tcp6"))


def test_the_log_line_says_how_long_and_why():
    line = drain.describe(drain.Outcome(0.62, drain.QUIET, 3, 0, 0.5), quiet=0.5)
    assert line.startswith("drain ended after 0.62 s: quiet")
    bound = drain.describe(drain.Outcome(10.0, drain.BOUND, 0, 2, 10.0), quiet=0.5)
    assert "upper bound reached (2 connection(s) open" in bound
