"""Apply: make the running HAProxy run a new config text, with as little disruption as possible.

The file on disk always equals what runs, so that a restarted HAProxy comes back identical:

1. The text goes to a candidate file beside the live one.
2. A change only to `server` lines of existing backends (same skeleton, see parse.py) goes straight
   to the runtime API, with no `haproxy -c`: basenode has validated those lines itself (parse.py),
   and HAProxy parses each `add server` with its config parser and refuses a bad one. The plan
   (plan.py) adds new servers then enables them; sends removed ones to maintenance, gives them a
   short bounded time to finish their sessions, then deletes them; sets a changed address, port or
   weight in place. `show servers state` verifies the result, and only then is the candidate
   renamed over the live file.
3. Everything else (a route added or removed, a template edit, a server line basenode does not
   apply at runtime, the first start, apply_mode reload), and any runtime command HAProxy
   refuses or a verification that fails, is checked with `haproxy -c` before a seamless
   master-worker reload. A rejected candidate is removed and the running config keeps serving
   (CheckFailed, with HAProxy's own message); a refused reload puts the old file back.

Nothing here knows about Consul.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from ...config import Settings
from ...files import promote, read_text, remember_text, write_atomic
from . import plan as planning
from .baseline import LIVE, SERVERS, UNKNOWN
from .errors import ApplyError, CheckFailed, NeedReload, RuntimeAPIError
from .parse import ParsedConfig, parse_config
from .program import check, reload, running, version
from .runtime import SOCKET_TIMEOUT, ServersState, Version, command, show_backends, show_servers_state

if TYPE_CHECKING:  # PID 1 imports this package for program(): not the snapshot's hashlib (OpenSSL)
    from ...snapshot import Snapshot

log = logging.getLogger("basenode.haproxy")

# How long apply waits for a removed server's sessions to end so that it can be deleted at once.
# Waiting is not what protects those sessions (maintenance already stops new traffic and never cuts
# a session); it only tidies up. A longer session (a database pool's connection) keeps running and
# its server, in maintenance, is deleted by a later apply.
DRAIN_TIMEOUT = 0.5


@dataclass(frozen=True)
class ApplyResult:
    """What apply did. `how`: unchanged | runtime | reload | written (no HAProxy running yet)."""

    how: str
    seconds: float
    added: Tuple[str, ...] = ()  # "backend/server"
    removed: Tuple[str, ...] = ()
    updated: Tuple[str, ...] = ()
    draining: Tuple[str, ...] = ()  # removed but still finishing sessions (in maintenance, deleted later)
    reason: str = ""  # why a reload happened


# HAProxy's config is derived state: the sync loop renders it again before HAProxy starts, at every
# start of basenode. So it is written atomically but not fsync'd: three fsyncs were most of a
# runtime apply's time (docs/benchmarks.md), on the path every instance change takes.
DURABLE = False


def _write(path: Path, text: str) -> None:
    """write_atomic, its OSError (a full or read-only state dir) an ApplyError: nothing changed, the
    running config stays, and the caller retries as for any failed apply."""
    try:
        write_atomic(path, text, durable=DURABLE)
    except OSError as e:
        raise ApplyError(f"cannot write {path}: {e.strerror or e}") from None


def _promote(candidate: Path, live: Path, text: str) -> None:
    try:
        promote(candidate, live, durable=DURABLE)
    except OSError as e:
        raise ApplyError(f"cannot replace {live}: {e.strerror or e}") from None
    remember_text(live, text)


def apply(
    settings: Settings,
    previous: Optional[Snapshot],
    current: Snapshot,
    text: str,
    *,
    drain_timeout: float = DRAIN_TIMEOUT,
    baseline: str = LIVE,
) -> ApplyResult:
    """Make HAProxy run `text` (rendered from `current`). See the module docstring for the steps.

    `baseline` (baseline.py): LIVE, HAProxy runs the live file; SERVERS, it runs the live file's
    skeleton with servers that may differ (every backend is compared, the same text included, and
    "written" means HAProxy still does not answer); UNKNOWN, it may run another skeleton: the text is
    checked and HAProxy reloaded, the same text included.

    The baseline is what actually runs (the live file and `show servers state`), not `previous`,
    which is accepted for the caller's bookkeeping and logging only: after a failed apply or a
    restart they can differ, and the running state is the one that counts.

    Raises CheckFailed (the running config stays) or ApplyError: the candidate could not be written
    (a full state dir: nothing changed), or the new file is in place but HAProxy could not be made
    to run it (on a failed reload the old file is restored).
    """
    del previous, current  # see the docstring
    started = time.monotonic()
    live = settings.haproxy_cfg
    live_text = read_text(live)
    mode = settings.watch.apply_mode
    if mode != "runtime" and baseline == SERVERS:  # no runtime apply to compare the servers with
        baseline = UNKNOWN
    if text == live_text and baseline != UNKNOWN:
        return _apply_unchanged(settings, live_text, started, drain_timeout, baseline)

    candidate = live.with_name(live.name + ".new")
    _write(candidate, text)
    is_running: Optional[bool] = None
    reason = "no live config" if mode == "runtime" else f"apply mode {mode}"
    if baseline == UNKNOWN:
        reason = "files were written while HAProxy did not answer"
    touched = False  # runtime commands were sent before the runtime path failed
    if mode == "runtime" and live_text is not None and baseline != UNKNOWN:
        old, new = parse_config(live_text), parse_config(text)
        reason = "routes or template changed"
        if old.skeleton == new.skeleton:
            is_running = running(settings)
            if is_running:
                try:
                    plan, draining = _run_plan(
                        settings,
                        old,
                        new,
                        None if baseline == SERVERS else planning.changed_backends(old, new),
                        drain_timeout,
                    )
                except NeedReload as e:
                    reason = str(e)
                except RuntimeAPIError as e:
                    log.warning("haproxy: runtime API apply failed, checking and reloading instead: %s", e)
                    reason, touched = f"runtime API failed: {e}", isinstance(e, PartlyApplied)
                else:
                    _promote(candidate, live, text)
                    return _result(started, "runtime" if plan.any() else "unchanged", plan, draining)

    _check(settings, candidate, live_text if touched else None)
    if not (running(settings) if is_running is None else is_running):
        # Nothing to apply to yet (first render, or HAProxy is between restarts): the supervisor
        # starts HAProxy from the file we leave here.
        _promote(candidate, live, text)
        return _result(started, "written")
    _promote(candidate, live, text)
    _reload_or_restore(settings, live_text)
    return _result(started, "reload", reason=reason)


def _apply_unchanged(
    settings: Settings, live_text: Optional[str], started: float, drain_timeout: float, baseline: str
) -> ApplyResult:
    """The same text again: nothing to write, but the running servers are compared with all of the
    live file's, which also retries deletions left over from an earlier apply."""
    if settings.watch.apply_mode != "runtime" or live_text is None:
        return _result(started, "unchanged")
    if not running(settings):
        return _result(started, "unchanged" if baseline == LIVE else "written")
    parsed = parse_config(live_text)
    try:
        # A file written while HAProxy was starting may be newer than the one it read: then it runs
        # other backends (reload), or other servers (the plan below sets them).
        if sorted(show_backends(settings.haproxy_stats_socket)) != sorted(parsed.backends):
            _reload_or_restore(settings, live_text)
            return _result(started, "reload", reason="HAProxy runs other backends than the live file")
        plan, draining = _run_plan(settings, parsed, parsed, None, drain_timeout)
    except (NeedReload, RuntimeAPIError) as e:
        log.warning("haproxy: runtime API apply failed, reloading instead: %s", e)
        _reload_or_restore(settings, live_text)  # the live file passed its check when it was applied
        return _result(started, "reload", reason=f"runtime API failed: {e}")
    return _result(started, "runtime" if plan.any() else "unchanged", plan, draining)


def _check(settings: Settings, candidate: Path, resync_from: Optional[str]) -> None:
    """`haproxy -c` on the candidate; a rejected one is removed (CheckFailed).

    `resync_from` is the live text when a failed runtime apply already changed some servers: the
    running worker then no longer equals the live file, and a reload of that file (which passed its
    check when it was applied) brings the two together again before the CheckFailed goes up.
    """
    try:
        check(settings.haproxy_bin, candidate)
    except CheckFailed:
        with contextlib.suppress(OSError):
            candidate.unlink()
        if resync_from is not None:
            try:
                reload(settings)
            except ApplyError as e:
                log.error("haproxy: reloading the live config after a partial runtime apply failed: %s", e)
        raise


def _result(
    started: float,
    how: str,
    plan: Optional[planning.Plan] = None,
    draining: Sequence[str] = (),
    reason: str = "",
) -> ApplyResult:
    p = plan or planning.Plan((), ())
    outcome = ApplyResult(
        how=how,
        seconds=time.monotonic() - started,
        added=p.added,
        removed=p.removed,
        updated=p.updated,
        draining=tuple(draining),
        reason=reason,
    )
    if how != "unchanged":
        log.info(
            "haproxy: applied by %s in %.1f ms%s%s",
            how,
            outcome.seconds * 1000,
            f" (+{len(p.added)} -{len(p.removed)} ~{len(p.updated)} servers)" if how == "runtime" else "",
            f": {reason}" if reason else "",
        )
    return outcome


def _reload_or_restore(settings: Settings, live_text: Optional[str]) -> None:
    try:
        reload(settings)
    except ApplyError:
        # Keep "the file on disk equals what runs": the old workers still run the old text.
        if live_text is not None:
            _write(settings.haproxy_cfg, live_text)
        raise


# ---------------------------------------------------------------------------------------------
# Running a plan


class PartlyApplied(RuntimeAPIError):
    """The runtime path failed after some of its commands had been carried out."""


def _run_plan(
    settings: Settings,
    old: ParsedConfig,
    new: ParsedConfig,
    scope: Optional[Sequence[str]],
    drain_timeout: float,
) -> Tuple[planning.Plan, List[str]]:
    """Plan, send, delete, verify; returns the plan and the servers still draining."""
    sock = settings.haproxy_stats_socket
    plan = planning.plan_changes(old, new, _servers_state(sock, scope), scope)
    release = version(settings.haproxy_bin)
    sent = 0
    try:
        for step in plan.commands:
            _send(sock, step, release)
            sent += 1
        if release >= planning.SINCE_3_0:
            draining = _delete_when_removable(sock, plan.removals, drain_timeout, release)
        else:
            draining = _drain_and_delete(sock, plan.removals, drain_timeout)
        problem = planning.verify(new, _servers_state(sock, scope), scope)
    except RuntimeAPIError as e:
        if sent:
            raise PartlyApplied(str(e)) from None
        raise
    if problem is not None:
        raise PartlyApplied(f"verify: {problem}")
    return plan, draining


def _send(sock: Path, step: planning.Command, version: Version) -> None:
    answer = command(sock, step.words).strip()
    if not planning.answer_ok(step.expect, answer, version):
        raise RuntimeAPIError(f"{step.line}: {answer}")


def _servers_state(sock: Path, scope: Optional[Sequence[str]]) -> ServersState:
    """All backends (scope None), or just those in scope: one small query each when they are few."""
    if scope is None or len(scope) > 20:
        return show_servers_state(sock)
    actual: Dict[str, Dict] = {}
    for backend in scope:
        actual.update(show_servers_state(sock, backend))
    return actual


def _drain_and_delete(sock: Path, removals: Sequence[planning.Removal], drain_timeout: float) -> List[str]:
    """`del server` each one as soon as its sessions are done; returns those still busy at the deadline.

    They stay in maintenance (no new traffic) and the next apply tries again. Only servers removed by
    this apply (`fresh`) are waited for; those left over from an earlier apply get one attempt.
    """
    pending = list(removals)
    deadline = time.monotonic() + drain_timeout
    pause = 0.002
    left: List[str] = []
    rounds = 0
    while pending:
        still = []
        for removal in pending:
            reason = planning.deleted(command(sock, planning.deletion(removal).words).strip())
            if reason is None:
                continue
            if not planning.busy(reason):
                raise RuntimeAPIError(f"del server {removal.target}: {reason}")
            if removal.fresh and time.monotonic() < deadline:
                still.append(removal)
            else:
                left.append(removal.target)
        pending = still
        rounds += 1
        if pending:
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
            if rounds % 4 == 0:
                for removal in pending:
                    _purge_idle(sock, removal)
    if left:
        log.info("haproxy: %d removed servers still have sessions; deleting them later", len(left))
    return left


def _delete_when_removable(
    sock: Path, removals: Sequence[planning.Removal], drain_timeout: float, release: Version
) -> List[str]:
    """HAProxy >= 3.0: `wait <ms> srv-removable` (HAProxy itself watches the server's sessions end),
    then `del server`; returns those still busy. The servers removed by this apply share one deadline;
    those left over from an earlier apply are not waited for."""
    deadline = time.monotonic() + drain_timeout
    left: List[str] = []
    for removal in removals:
        wait_ms = int((deadline - time.monotonic()) * 1000) if removal.fresh else 0
        *wait, delete = planning.removal_steps(removal, max(wait_ms, 0), release)
        for step in wait:
            answer = command(sock, step.words, timeout=wait_ms / 1000 + SOCKET_TIMEOUT, keep_input_open=True)
            if not planning.answer_ok(step.expect, answer.strip(), release):
                _purge_idle(sock, removal)  # what 3.3 still counts against a removal, closed now
        if not wait:
            _purge_idle(sock, removal)
        reason = planning.deleted(command(sock, delete.words).strip())
        if reason is None:
            continue
        if not planning.busy(reason):
            raise RuntimeAPIError(f"del server {removal.target}: {reason}")
        left.append(removal.target)
    if left:
        log.info("haproxy: %d removed servers still have sessions; deleting them later", len(left))
    return left


def _purge_idle(sock: Path, removal: planning.Removal) -> None:
    """Close a server's idle connections: HAProxy does so when a server enters maintenance, but a
    request that was in flight then leaves its connection idle afterwards, where it would stay until
    the pool's purge (5 s). Leaving maintenance for drain (which takes no new traffic: there is no
    persistence) and entering it again closes them."""
    for state in ("drain", "maint"):
        _send(
            sock, planning.Command(("set", "server", removal.target, "state", state), planning.EMPTY), (0, 0)
        )
