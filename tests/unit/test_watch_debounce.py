"""Leading-edge debounce, on a fake clock: what a burst of catalog changes turns into."""

from __future__ import annotations

from basenode.watch.debounce import Debouncer


def test_an_isolated_change_is_emitted_at_once():
    d = Debouncer(wait_min=0.05, wait_max=1.0)
    assert d.change(10.0) is True
    d.emitted(10.0)
    assert d.deadline() is None


def test_changes_right_after_an_emission_are_coalesced_into_one_more_after_quiet():
    d = Debouncer(wait_min=0.05, wait_max=1.0)
    assert d.change(0.0)
    d.emitted(0.0)
    assert d.change(0.01) is False
    assert d.change(0.03) is False
    assert d.deadline() == 0.03 + 0.05
    assert not d.due(0.079)
    assert d.due(0.08)
    d.emitted(0.08)
    assert d.deadline() is None


def test_a_steady_stream_of_changes_still_emits_by_wait_max():
    d = Debouncer(wait_min=0.05, wait_max=1.0)
    assert d.change(0.0)
    d.emitted(0.0)
    now = 0.01
    emitted_at = None
    while now < 3.0 and emitted_at is None:
        d.change(now)  # every 10 ms: never 50 ms of quiet
        now = round(now + 0.01, 6)
        if d.due(now):
            emitted_at = now
    assert emitted_at is not None
    assert emitted_at <= 0.01 + 1.0 + 1e-9


def test_a_change_after_a_quiet_period_is_emitted_at_once_again():
    d = Debouncer(wait_min=0.05, wait_max=1.0)
    assert d.change(0.0)
    d.emitted(0.0)
    assert d.change(0.2) is True


def test_a_burst_of_twenty_changes_becomes_two_emissions():
    d = Debouncer(wait_min=0.05, wait_max=1.0)
    emissions = 0
    now = 0.0
    for _ in range(20):
        if d.change(now):
            emissions += 1
            d.emitted(now)
        now += 0.005
    while d.deadline() is not None:
        now = d.deadline()
        assert d.due(now)
        d.emitted(now)
        emissions += 1
    assert emissions == 2


def test_wait_max_below_wait_min_is_raised_to_wait_min():
    d = Debouncer(wait_min=0.5, wait_max=0.1)
    d.change(0.0)
    d.emitted(0.0)
    d.change(0.1)
    assert d.deadline() == 0.6
