"""One render -> check -> apply -> retry step for every output, and the one record of how it fared.

HAProxy's config and each template's destination are outputs of the same dependency data. Each goes
through `attempt`: its render (None while the data it asked for is on its way), then its apply,
which checks the candidate, puts it in place and makes its program use it. A step that fails raises
`OutputFailed`, naming the counter it counts in and whether it may mend itself without any input
changing (a full disk, a program between lives, a check command that reads the file system): those
are due again every RETRY_SECONDS, the others (a template error) wait for an input to change.

The outcome lands in the output's `OutputRecord`, the one record /health, /status and /metrics read:
its counters, its last error (None after a success) and when a retry is due. A failure that repeats
on retry is logged once, then at debug level; the success after a failure says what it ended.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

RETRY_SECONDS = 2.0  # a failure that may mend itself is tried again this often


class OutputFailed(Exception):
    """A step of an output failed; `counter` is the OutputRecord field it counts in.

    `message` is what the record keeps (and /health shows), `headline` what the log says (the
    message unless the output words it for a reader of the log). `retry`: the same input may work
    soon (due again after RETRY_SECONDS). `applied`: the new text is in place and only a later step
    (its program's reload) failed, so it counts as written.
    """

    def __init__(
        self,
        counter: str,
        message: str,
        *,
        headline: Optional[str] = None,
        retry: bool = False,
        applied: bool = False,
    ) -> None:
        super().__init__(message)
        self.counter, self.message, self.headline = counter, message, headline or message
        self.retry, self.applied = retry, applied


@dataclass
class OutputRecord:
    """How one output fared. Subclasses add the counters of the failures their steps can have."""

    render_errors: int = 0
    check_failures: int = 0
    last_error: Optional[str] = None  # "<step>: <why>"; None after a success
    retry_at: Optional[float] = None  # clock time a failure that may mend itself is due again

    def due(self, now: float) -> bool:
        return self.retry_at is not None and now >= self.retry_at

    def failed(self, counter: str, message: str, retrying: bool) -> bool:
        """Count one failure; True when it is news (not the same failure again on a retry)."""
        if not isinstance(getattr(self, counter, None), int):
            raise ValueError(f"{type(self).__name__} has no counter {counter!r}")
        setattr(self, counter, getattr(self, counter) + 1)
        news = not (retrying and self.last_error == message)
        self.last_error = message
        return news

    def succeeded(self) -> Optional[str]:
        """A step went through: the error this ends, if any."""
        ended, self.last_error, self.retry_at = self.last_error, None, None
        return ended

    def doc(self) -> Dict[str, Any]:
        """The record as /status shows it (the retry time is the loop's, not the operator's)."""
        fields = dataclasses.asdict(self)
        del fields["retry_at"]
        return fields


@dataclass(frozen=True)
class Outcome:
    """What one attempt did: how it applied (None: nothing, waiting or failed), and its failure."""

    how: Optional[str] = None
    failure: Optional[OutputFailed] = None


def attempt(
    record: OutputRecord,
    label: str,
    render: Callable[[], Optional[str]],
    apply: Callable[[str], str],
    clock: Callable[[], float],
    keeps: str,
    logger: logging.Logger,
) -> Outcome:
    """render -> apply for one output, its outcome in `record`, logged to the output's `logger`;
    `label` names the output in the log, `keeps` what stays in place when a step fails.

    Only OutputFailed is handled here: each output turns its own errors into one, so a bug (any
    other exception) surfaces with its traceback where the output is driven.
    """
    retrying = record.retry_at is not None
    record.retry_at = None
    try:
        text = render()
        if text is None:
            return Outcome()
        how = apply(text)
    except OutputFailed as e:
        if e.retry:
            record.retry_at = clock() + RETRY_SECONDS
        news = record.failed(e.counter, e.message, retrying)
        logger.log(logging.ERROR if news else logging.DEBUG, "%s: %s (%s)", label, e.headline, keeps)
        return Outcome(how="written" if e.applied else None, failure=e)
    ended = record.succeeded()
    if ended is not None:
        logger.info("%s works again after: %s", label, ended)
    return Outcome(how=how)
