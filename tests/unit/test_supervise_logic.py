"""The supervisor's pure logic: line splitting, backoff, exit statuses, unresolvable dependencies."""

from __future__ import annotations

import os
import subprocess

import pytest

from basenode import config
from basenode.supervise import Supervisor
from basenode.supervise.output import MAX_LINE, split_lines
from basenode.supervise.policy import backoff_delay, unresolvable
from basenode.supervise.process import describe_exit, exit_code


def test_complete_lines_come_out_whole_and_a_partial_line_waits_for_its_end():
    lines, rest = split_lines(b"", b"one\ntwo\nthr")
    assert lines == [b"one", b"two"]
    assert rest == b"thr"
    lines, rest = split_lines(rest, b"ee\n")
    assert lines == [b"three"]
    assert rest == b""


def test_empty_lines_are_kept():
    assert split_lines(b"", b"\n\nx\n") == ([b"", b"", b"x"], b"")


def test_a_line_longer_than_the_limit_is_split_and_nothing_is_lost():
    data = b"x" * (3 * MAX_LINE + 5) + b"\nnext\n"
    lines, rest = split_lines(b"", data)
    assert all(len(line) <= MAX_LINE for line in lines)
    assert b"".join(lines[:-1]) == b"x" * (3 * MAX_LINE + 5)
    assert lines[-1] == b"next"
    assert rest == b""


def test_an_endless_line_never_buffers_more_than_the_limit():
    rest = b""
    emitted = 0
    for _ in range(50):
        lines, rest = split_lines(rest, b"y" * 10000)
        emitted += sum(len(line) for line in lines)
        assert len(rest) <= MAX_LINE
    assert emitted + len(rest) == 50 * 10000


def test_splitting_a_long_line_does_not_cut_a_utf8_character():
    text = ("é" * 40).encode()  # 2 bytes each
    lines, rest = split_lines(b"", text, limit=7)
    for line in [*lines, rest]:
        line.decode("utf-8")  # raises if a character was cut in two
    assert b"".join([*lines, rest]) == text


def test_binary_without_utf8_boundaries_is_still_split_at_the_limit():
    data = b"\x80" * 20
    lines, rest = split_lines(b"", data, limit=8)
    assert all(len(line) <= 8 for line in lines)
    assert b"".join([*lines, rest]) == data


def test_backoff_doubles_from_initial_up_to_the_cap_with_at_most_20_percent_jitter_down():
    no_jitter = [backoff_delay(n, 0.5, 4.0, rand=lambda: 0.0) for n in range(1, 7)]
    assert no_jitter == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    full_jitter = [backoff_delay(n, 0.5, 4.0, rand=lambda: 1.0) for n in range(1, 5)]
    assert full_jitter == pytest.approx([0.4, 0.8, 1.6, 3.2])


def test_backoff_initial_zero_restarts_at_once():
    assert backoff_delay(1, 0.0, 30.0) == 0.0
    assert backoff_delay(10, 0.0, 30.0) == 0.0


def test_backoff_does_not_overflow_after_many_restarts():
    assert backoff_delay(10_000, 0.5, 30.0, rand=lambda: 0.0) == 30.0


def _status_of(argv):
    proc = subprocess.Popen(argv)
    _, status = os.waitpid(proc.pid, 0)
    proc.returncode = 0  # reaped above
    return status


def test_exit_status_is_the_shells_128_plus_n_for_a_signal():
    assert exit_code(_status_of(["sh", "-c", "exit 7"])) == 7
    status = _status_of(["sh", "-c", "kill -TERM $$"])
    assert exit_code(status) == 143
    assert describe_exit(status) == "killed by SIGTERM"


def test_unknown_dependencies_and_cycles_are_reported_where_they_are():
    programs = [
        config.Program(name="a", command=("true",), depends_on=("b",)),
        config.Program(name="b", command=("true",), depends_on=("a",)),
        config.Program(name="c", command=("true",), depends_on=("a",)),
        config.Program(name="d", command=("true",), depends_on=("nope",)),
        config.Program(name="e", command=("true",)),
        config.Program(name="f", command=("true",), depends_on=("e",)),
    ]
    bad = unresolvable(programs)
    # c only waits on the cycle: it goes FATAL once a is FATAL, with that as its reason.
    assert bad == {
        "a": "depends_on has a cycle: a -> b -> a",
        "b": "depends_on has a cycle: b -> a -> b",
        "d": "depends on unknown program 'nope'",
    }


def test_two_programs_with_one_name_are_refused():
    programs = [config.Program(name="a", command=("true",))] * 2
    with pytest.raises(ValueError, match="'a' defined twice"):
        Supervisor(programs)


def test_states_are_readable_before_the_loop_runs():
    supervisor = Supervisor([config.Program(name="web", command=("true",))])
    (state,) = supervisor.states()
    assert (state.name, state.state, state.pid, state.restarts) == ("web", "waiting", None, 0)


def test_supervise_refuses_to_run_outside_the_main_thread():
    import threading

    errors = []

    def run():
        try:
            Supervisor([]).run()
        except RuntimeError as e:
            errors.append(str(e))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert errors and "main thread" in errors[0]


def test_backoff_jitter_stays_within_its_bounds_with_the_real_random_source():
    delays = {backoff_delay(3, 1.0, 30.0) for _ in range(200)}
    assert all(3.2 <= d <= 4.0 for d in delays)
    assert len(delays) > 100  # it does vary


def test_why_a_program_is_being_stopped_stays_inside_the_record_and_shows_as_stopping():
    from basenode.supervise import process

    record = process.Proc(config.Program(name="web", command=("true",)))
    shown = {}
    for state in (process.RESTARTING, process.RETIRING, process.STOPPING, process.RETIRED):
        record.state = state
        shown[state] = record.view().state
    assert shown == {
        "restarting": "stopping",
        "retiring": "stopping",
        "stopping": "stopping",
        "retired": "stopped",
    }
