"""Apply: make the running HAProxy run a new config text, with as little disruption as possible.

1. The text goes to a candidate file in the state dir and `haproxy -c` checks it. A rejected
   candidate is removed; the live file and the running process are untouched (CheckFailed,
   with HAProxy's own message).
2. The candidate is renamed over the live file, so the file on disk always equals what runs and a
   restarted HAProxy comes back identical.
3. If the config differs from the live one only in `server` lines of existing backends, the plan
   (plan.py) brings the running worker in step through the runtime API: new servers `add server`
   then `enable server`; removed servers go to maintenance, get a short bounded time to finish
   their sessions, then `del server`; a changed address, port or weight is `set` in place.
   `show servers state` then verifies the result; any API error or mismatch falls back to a reload.
4. Anything else (a route added or removed, a template edit) is a seamless master-worker reload.

Nothing here knows about Consul.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ...config import Settings
from ...files import promote, write_atomic
from ...snapshot import Snapshot
from . import plan as planning
from .errors import ApplyError, CheckFailed, NeedReload, RuntimeAPIError
from .parse import ParsedConfig, parse_config
from .program import finish_check, reload, restart, running, start_check
from .runtime import ServersState, Version, command, show_servers_state

log = logging.getLogger("basenode.haproxy")

# How long apply waits for a removed server's sessions to end so that it can be deleted at once.
# Waiting is not what protects those sessions (maintenance already stops new traffic and never cuts
# a session); it only tidies up. A longer session (a database pool's connection) keeps running and
# its server, in maintenance, is deleted by a later apply.
DRAIN_TIMEOUT = 0.5


@dataclass(frozen=True)
class ApplyResult:
    """What apply did. `how`: unchanged | runtime | reload | restart | written (no HAProxy running yet)."""

    how: str
    seconds: float
    added: Tuple[str, ...] = ()  # "backend/server"
    removed: Tuple[str, ...] = ()
    updated: Tuple[str, ...] = ()
    draining: Tuple[str, ...] = ()  # removed but still finishing sessions (in maintenance, deleted later)
    reason: str = ""  # why a reload or restart happened


def _write(path: Path, text: str) -> None:
    """write_atomic, its OSError (a full or read-only state dir) an ApplyError: nothing changed, the
    running config stays, and the caller retries as for any failed apply."""
    try:
        write_atomic(path, text)
    except OSError as e:
        raise ApplyError(f"cannot write {path}: {e.strerror or e}") from None


def _promote(candidate: Path, live: Path) -> None:
    try:
        promote(candidate, live)
    except OSError as e:
        raise ApplyError(f"cannot replace {live}: {e.strerror or e}") from None


def apply(
    settings: Settings,
    previous: Optional[Snapshot],
    current: Snapshot,
    text: str,
    *,
    drain_timeout: float = DRAIN_TIMEOUT,
    restart_hook: Optional[Callable[[], None]] = None,
) -> ApplyResult:
    """Make HAProxy run `text` (rendered from `current`). See the module docstring for the steps.

    The baseline is what actually runs (the live file and `show servers state`), not `previous`,
    which is accepted for the caller's bookkeeping and logging only: after a failed apply or a
    restart they can differ, and the running state is the one that counts.

    Raises CheckFailed (nothing changed) or ApplyError: the candidate could not be written (a full
    state dir: nothing changed), or the new file is in place but HAProxy could not be made to run it
    (on a failed reload the old file is restored).
    `restart_hook` replaces the default restart (SIGTERM to the master, the supervisor starts it again)
    for apply_mode="restart".
    """
    del previous, current  # see the docstring
    started = time.monotonic()
    live = settings.haproxy_cfg
    try:
        live_text: Optional[str] = live.read_text(encoding="utf-8")
    except FileNotFoundError:
        live_text = None
    changed = text != live_text
    candidate = live.with_name(live.name + ".new")
    mode = settings.watch.apply_mode
    parsed: Optional[Tuple[ParsedConfig, ParsedConfig]] = None
    if changed:
        _write(candidate, text)
        checking = start_check(settings.haproxy_bin, candidate)
        try:
            if mode == "runtime" and live_text is not None:
                parsed = (parse_config(live_text), parse_config(text))  # while haproxy -c runs
        finally:
            try:
                finish_check(checking, settings.haproxy_bin)
            except CheckFailed:
                with contextlib.suppress(OSError):
                    candidate.unlink()
                raise

    def result(
        how: str, changes: Optional[planning.Plan] = None, draining: Sequence[str] = (), reason: str = ""
    ) -> ApplyResult:
        c = changes or planning.Plan((), ())
        outcome = ApplyResult(
            how=how,
            seconds=time.monotonic() - started,
            added=c.added,
            removed=c.removed,
            updated=c.updated,
            draining=tuple(draining),
            reason=reason,
        )
        if how != "unchanged":
            log.info(
                "haproxy: applied by %s in %.1f ms%s%s",
                how,
                outcome.seconds * 1000,
                f" (+{len(c.added)} -{len(c.removed)} ~{len(c.updated)} servers)" if how == "runtime" else "",
                f": {reason}" if reason else "",
            )
        return outcome

    if not running(settings):
        # Nothing to apply to yet (first render, or HAProxy is between restarts): the supervisor
        # starts HAProxy from the file we leave here.
        if changed:
            _promote(candidate, live)
        return result("written" if changed else "unchanged")

    if mode in ("reload", "restart") or live_text is None:
        if not changed:
            return result("unchanged")
        _promote(candidate, live)
        if mode == "restart":
            if restart_hook is not None:
                restart_hook()
            else:
                restart(settings)
            return result("restart", reason="apply mode restart")
        _reload_or_restore(settings, live_text)
        return result("reload", reason="apply mode reload" if mode == "reload" else "no live config")

    old, new = parsed or (parse_config(live_text), parse_config(text))
    if old.skeleton != new.skeleton:
        _promote(candidate, live)
        _reload_or_restore(settings, live_text)
        return result("reload", reason="routes or template changed")
    if changed:
        _promote(candidate, live)
    try:
        # Only backends whose server lines changed need a look, unless nothing changed at all: then
        # everything is compared (which also retries deletions left over from an earlier apply).
        scope = planning.changed_backends(old, new) if changed else None
        changes, draining = _run_plan(settings.haproxy_stats_socket, old, new, scope, drain_timeout, (0, 0))
    except NeedReload as e:
        _reload_or_restore(settings, live_text)
        return result("reload", reason=str(e))
    except RuntimeAPIError as e:
        log.warning("haproxy: runtime API apply failed, reloading instead: %s", e)
        _reload_or_restore(settings, live_text)
        return result("reload", reason=f"runtime API failed: {e}")
    return result("runtime" if changes.any() else "unchanged", changes, draining)


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


def _run_plan(
    sock: Path,
    old: ParsedConfig,
    new: ParsedConfig,
    scope: Optional[Sequence[str]],
    drain_timeout: float,
    version: Version,
) -> Tuple[planning.Plan, List[str]]:
    """Plan, send, delete, verify; returns the plan and the servers still draining."""
    plan = planning.plan_changes(old, new, _servers_state(sock, scope), scope)
    for step in plan.commands:
        _send(sock, step, version)
    draining = _drain_and_delete(sock, plan.removals, drain_timeout)
    problem = planning.verify(new, _servers_state(sock, scope), scope)
    if problem is not None:
        raise RuntimeAPIError(f"verify: {problem}")
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


def _purge_idle(sock: Path, removal: planning.Removal) -> None:
    """Close a server's idle connections: HAProxy does so when a server enters maintenance, but a
    request that was in flight then leaves its connection idle afterwards, where it would stay until
    the pool's purge (5 s). Leaving maintenance for drain (which takes no new traffic: there is no
    persistence) and entering it again closes them."""
    for state in ("drain", "maint"):
        _send(
            sock, planning.Command(("set", "server", removal.target, "state", state), planning.EMPTY), (0, 0)
        )
