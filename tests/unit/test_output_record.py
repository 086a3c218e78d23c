"""output.record: the one render -> apply -> retry step HAProxy's config and every template take."""

from __future__ import annotations

import logging
from typing import List, Optional

import pytest

from basenode.output.record import RETRY_SECONDS, OutputFailed, OutputRecord, attempt
from basenode.status.state import SyncState
from basenode.template.loop import TemplateStatus

log = logging.getLogger("basenode.test.record")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(record: OutputRecord, clock: Clock, text: Optional[str] = "cfg", fail: Optional[OutputFailed] = None):
    applied: List[str] = []

    def apply(t: str) -> str:
        if fail is not None:
            raise fail
        applied.append(t)
        return "written"

    outcome = attempt(record, "out", lambda: text, apply, clock, "the old file stays", log)
    return outcome, applied


def test_a_success_applies_the_text_and_leaves_no_error():
    record, clock = OutputRecord(), Clock()
    outcome, applied = run(record, clock)
    assert (outcome.how, outcome.failure, applied) == ("written", None, ["cfg"])
    assert record.last_error is None and record.retry_at is None


def test_while_data_is_on_its_way_nothing_is_applied_and_nothing_counts_as_failed():
    record, clock = OutputRecord(), Clock()
    outcome, applied = run(record, clock, text=None)
    assert (outcome.how, applied, record.render_errors, record.last_error) == (None, [], 0, None)


def test_a_failure_that_may_mend_itself_is_due_again_after_the_retry_interval():
    record, clock = SyncState(), Clock()
    outcome, _ = run(record, clock, fail=OutputFailed("apply_errors", "apply: disk full", retry=True))
    assert outcome.how is None and outcome.failure is not None
    assert (record.apply_errors, record.last_error) == (1, "apply: disk full")
    assert not record.due(clock.now)
    clock.now += RETRY_SECONDS
    assert record.due(clock.now)


def test_a_failure_that_only_an_input_can_mend_is_never_due_by_itself():
    record, clock = OutputRecord(), Clock()
    run(record, clock, fail=OutputFailed("render_errors", "render: bad"))
    clock.now += 3600
    assert not record.due(clock.now) and record.render_errors == 1


def test_the_same_failure_on_a_retry_is_logged_once_and_the_recovery_says_what_it_ended(caplog):
    record, clock = TemplateStatus(destination="/etc/app.conf"), Clock()
    failure = OutputFailed("output_errors", "cannot write /etc/app.conf", retry=True)
    with caplog.at_level(logging.DEBUG, logger=log.name):
        run(record, clock, fail=failure)
        clock.now += RETRY_SECONDS
        run(record, clock, fail=failure)
        run(record, clock)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "cannot write /etc/app.conf (the old file stays)" in errors[0].getMessage()
    assert record.output_errors == 2
    assert any("out works again after: cannot write" in r.getMessage() for r in caplog.records)
    assert record.last_error is None


def test_a_reload_failure_after_the_write_counts_as_written_and_is_retried():
    record, clock = TemplateStatus(destination="/etc/app.conf"), Clock()
    failure = OutputFailed("reload_failures", "reload: app not running", retry=True, applied=True)
    outcome, _ = run(record, clock, fail=failure)
    assert outcome.how == "written" and record.reload_failures == 1 and record.retry_at is not None


def test_a_counter_the_record_does_not_have_is_a_bug_not_a_silent_success():
    with pytest.raises(ValueError, match="no counter 'typo_errors'"):
        OutputRecord().failed("typo_errors", "x", retrying=False)


def test_the_status_document_of_a_record_leaves_out_the_loops_retry_time():
    record = TemplateStatus(destination="/etc/app.conf", retry_at=5.0)
    doc = record.doc()
    assert "retry_at" not in doc and doc["destination"] == "/etc/app.conf"
