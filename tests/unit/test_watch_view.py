"""Consul's blocking-query rules in one dependency's read loop (watch.view.follow), driven by a
scripted read on a fake clock (pure logic, no Consul); the sleeps are recorded, not slept."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any, List, Optional, Tuple

import pytest

from basenode.consul_async import ConsulException
from basenode.watch import view
from basenode.watch.view import BACKOFF_MAX, Pacing, SourceStatus, backoff_delay, follow


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Run:
    """What the loop asked for, what it stored, how long it slept, and its status."""

    def __init__(self) -> None:
        self.asked: List[Tuple[int, Optional[str], Optional[float]]] = []
        self.stored: List[Any] = []
        self.sleeps: List[float] = []
        self.status = SourceStatus("t")

    @property
    def indexes(self) -> List[int]:
        return [index for index, _, _ in self.asked]


@pytest.fixture
def recorded_sleeps(monkeypatch):
    """asyncio.sleep records its delay and yields once instead of sleeping."""
    sleeps: List[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float, result: Any = None) -> Any:
        sleeps.append(delay)
        return await real_sleep(0, result)

    monkeypatch.setattr(view.asyncio, "sleep", sleep)
    return sleeps


def run_script(
    answers: List[Any],
    sleeps: List[float],
    seconds_per_read: float = 10.0,
    poll_interval: Optional[float] = None,
) -> Run:
    """Feed the loop `answers` (an (index, value) pair or an exception); when they run out the read
    blocks and the test cancels the loop's task, as the Watcher does."""
    clock = Clock()
    pacing = Pacing(300.0, random.Random(7), clock, poll_interval=poll_interval)
    record = Run()
    record.sleeps = sleeps
    script = iter(answers)

    async def scenario() -> None:
        finished = asyncio.Event()

        async def read(
            index: int, wait: Optional[str], seconds: Optional[float]
        ) -> Tuple[int, Any, List[str]]:
            record.asked.append((index, wait, seconds))
            clock.now += seconds_per_read
            answer = next(script, None)
            if answer is None:
                finished.set()
                await asyncio.get_running_loop().create_future()  # blocks until cancelled
            if isinstance(answer, BaseException):
                raise answer
            return answer[0], answer[1], []

        task = asyncio.ensure_future(
            follow(read, record.stored.append, record.status, pacing, (ConsulException,))
        )
        await asyncio.wait_for(finished.wait(), 10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    return record


def test_the_first_read_is_plain_and_then_each_blocks_on_the_last_index_with_a_jittered_wait(recorded_sleeps):
    record = run_script([(5, "a"), (7, "b"), (7, "b")], recorded_sleeps)
    assert record.indexes == [0, 5, 7, 7]
    assert record.asked[0][1:] == (None, None)
    for _, wait, seconds in record.asked[1:]:
        assert wait is not None and wait.endswith("s") and seconds is not None
        assert 300 - 300 / 16 - 1 <= int(wait[:-1]) <= 300
        assert 300 - 300 / 16 <= seconds <= 300
    assert record.stored == ["a", "b", "b"]  # the store decides what changed
    assert record.status.index == 7


def test_an_index_that_goes_backwards_starts_over_from_zero(recorded_sleeps):
    record = run_script([(50, "a"), (60, "b"), (12, "c"), (13, "d")], recorded_sleeps)
    assert record.indexes == [0, 50, 60, 0, 13]
    assert record.asked[3][1] is None  # the read after the reset is a plain one


def test_an_index_of_zero_is_never_sent_back_as_a_blocking_index(recorded_sleeps):
    record = run_script([(0, "a"), (0, "a")], recorded_sleeps)
    assert record.indexes == [0, 1, 1]


def test_after_a_failed_read_the_loop_backs_off_reads_plainly_and_keeps_the_last_good_value(recorded_sleeps):
    error = ConsulException("cannot connect to 127.0.0.1:8500: ConnectionRefusedError")
    record = run_script([(50, "a"), error, error, (51, "b")], recorded_sleeps)
    assert record.indexes == [0, 50, 0, 0, 51]
    assert record.stored == ["a", "b"]  # a failed read stores nothing: unknown, never empty
    assert len(recorded_sleeps) == 2
    assert 0 < recorded_sleeps[0] <= 0.25 and 0 < recorded_sleeps[1] <= 0.5
    assert record.status.failures == 0 and record.status.errors == 2 and record.status.last_error == ""
    assert record.status.reads == 2


def test_failures_in_a_row_are_counted_and_the_error_is_kept_for_status(recorded_sleeps):
    error = ConsulException("500 rpc error (GET /v1/kv/x)")
    record = run_script([(5, "a"), error, error, error], recorded_sleeps)
    assert record.status.failures == 3
    assert record.status.last_error == "ConsulException: 500 rpc error (GET /v1/kv/x)"


def test_an_unmoved_index_returned_at_once_is_paced_not_spun(recorded_sleeps):
    record = run_script([(5, "a"), (5, "a"), (5, "a")], recorded_sleeps, seconds_per_read=0.001)
    assert record.indexes == [0, 5, 5, 5]
    assert len(recorded_sleeps) == 2 and all(0 < s <= 0.25 for s in recorded_sleeps)


def test_an_unmoved_index_after_the_wait_ran_out_is_read_again_at_once(recorded_sleeps):
    record = run_script([(5, "a"), (5, "a"), (5, "a")], recorded_sleeps, seconds_per_read=300.0)
    assert record.indexes == [0, 5, 5, 5]
    assert recorded_sleeps == []


def test_an_unexpected_error_in_a_read_is_logged_and_retried_not_fatal(recorded_sleeps, caplog):
    record = run_script([(5, "a"), KeyError("bug"), (6, "b")], recorded_sleeps)
    assert record.indexes == [0, 5, 0, 6]
    assert any("unexpected error" in r.getMessage() for r in caplog.records)
    assert record.stored == ["a", "b"]


def test_poll_mode_reads_plainly_every_interval(recorded_sleeps):
    record = run_script([(5, "a"), (6, "b"), (7, "c")], recorded_sleeps, poll_interval=5.0)
    assert record.asked == [(0, None, None)] * 4
    assert recorded_sleeps == [5.0, 5.0, 5.0]


def test_the_first_failure_of_a_run_is_a_warning_and_the_recovery_is_logged(recorded_sleeps, caplog):
    error = ConsulException("refused")
    with caplog.at_level(logging.DEBUG, logger="basenode.watch"):
        run_script([(5, "a"), error, error, (6, "b")], recorded_sleeps)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "keeping the last good state" in warnings[0]
    assert any("works again after 2 failed reads" in r.getMessage() for r in caplog.records)


def test_backoff_grows_is_capped_and_jittered():
    rng = random.Random(1)
    first = [backoff_delay(1, rng) for _ in range(50)]
    late = [backoff_delay(30, rng) for _ in range(50)]
    assert max(first) <= 0.25 and min(first) > 0
    assert max(late) <= BACKOFF_MAX and max(late) > 1.0
    assert len(set(late)) > 40
