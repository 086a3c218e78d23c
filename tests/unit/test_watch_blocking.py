"""Consul's blocking-query rules in the read loop, driven by a scripted read (pure logic, no Consul)."""

from __future__ import annotations

import random
import threading
from typing import Any, List, Optional, Tuple

import requests

from basenode.config import Settings, Watch
from basenode.watch import SourceStatus, Watcher


class ScriptedStop(threading.Event):
    """A stop event whose waits return at once and are recorded; set after the script runs out."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: List[float] = []

    def wait(self, timeout: Optional[float] = None) -> bool:
        self.waits.append(timeout or 0.0)
        return self.is_set()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_script(
    answers: List[Any], seconds_per_read: float = 10.0
) -> Tuple[List[Tuple[int, Optional[str]]], Watcher, ScriptedStop]:
    """Feed the loop `answers` (an (index, data) pair or an exception) and return what it asked for."""
    clock = Clock()
    watcher = Watcher(
        Settings(watch=Watch(blocking_wait="5m")), client=object(), clock=clock, rng=random.Random(7)
    )
    stop = ScriptedStop()
    asked: List[Tuple[int, Optional[str]]] = []
    script = iter(answers)

    def read(index: int, wait: Optional[str]) -> Tuple[int, Any]:
        asked.append((index, wait))
        clock.now += seconds_per_read
        answer = next(script, None)
        if answer is None:
            stop.set()
            return index, "end"
        if isinstance(answer, BaseException):
            raise answer
        return answer

    stored: List[Any] = []

    def store(data: Any) -> bool:
        changed = not stored or stored[-1] != data
        stored.append(data)
        return changed

    watcher.sources["t"] = SourceStatus("t")
    watcher._blocking_loop("t", read, store, stop)
    return asked, watcher, stop


def test_the_first_read_is_plain_and_then_each_blocks_on_the_last_index_with_a_jittered_wait():
    asked, _, _ = run_script([(5, "a"), (7, "b"), (7, "b")])
    assert [i for i, _ in asked] == [0, 5, 7, 7]
    assert asked[0][1] is None
    waits = [int(w[:-1]) for _, w in asked[1:]]
    assert all(300 - 300 / 16 - 1 <= w <= 300 for w in waits)


def test_an_index_that_goes_backwards_starts_over_from_zero():
    asked, _, _ = run_script([(50, "a"), (60, "b"), (12, "c"), (13, "d")])
    assert [i for i, _ in asked] == [0, 50, 60, 0, 13]


def test_an_index_of_zero_is_never_sent_back_as_a_blocking_index():
    asked, _, _ = run_script([(0, "a"), (0, "a")])
    assert [i for i, _ in asked] == [0, 1, 1]


def test_after_a_failed_read_the_loop_backs_off_and_reads_plainly():
    error = requests.ConnectionError("refused")
    asked, watcher, stop = run_script([(50, "a"), error, error, (51, "b")])
    assert [i for i, _ in asked] == [0, 50, 0, 0, 51]
    assert len(stop.waits) == 2 and all(0 < w <= 0.5 for w in stop.waits)
    assert watcher.sources["t"].failures == 0


def test_an_unmoved_index_returned_at_once_is_paced_not_spun():
    asked, _, stop = run_script([(5, "a"), (5, "a"), (5, "a")], seconds_per_read=0.001)
    assert [i for i, _ in asked] == [0, 5, 5, 5]
    assert len(stop.waits) == 2


def test_an_unexpected_error_in_a_read_is_logged_and_retried_not_fatal(caplog):
    asked, _, _ = run_script([(5, "a"), KeyError("bug"), (6, "b")])
    assert [i for i, _ in asked] == [0, 5, 0, 6]
    assert any("unexpected error" in r.getMessage() for r in caplog.records)
