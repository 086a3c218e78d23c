"""The plan: what the runtime API must be told to bring the running servers to a new config.

`plan_changes(old, new, running)` is a pure function of the live config's parse, the candidate's
parse and `show servers state`: it returns the commands to send, in order, and the servers to
delete once their sessions are done, or raises NeedReload when the change is one the runtime API
cannot make. The version-dependent parts (how a removal is waited for, how an answer reads) are
here too, so that they are tested without HAProxy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from .errors import NeedReload
from .parse import ParsedConfig
from .runtime import ADMIN_FDRAIN, ADMIN_FMAINT, ServersState, Version

# How a successful answer reads, per kind of command.
EMPTY = "empty"  # nothing at all
ADDED = "added"  # "New server registered."
ADDR = "addr"  # "IP changed from ..." / "no need to change ..."; on 3.0 and later also nothing
REMOVABLE = "removable"  # `wait ... srv-removable`: "Done."

# `wait <ms> srv-removable` exists from 3.0, and 3.3's `del server` no longer closes idle connections
# itself: a removal waits for its server to be removable first. 3.0 also answers an unchanged
# `set server ... addr` with nothing where 2.6 said "no need to change".
SINCE_3_0: Version = (3, 0)


@dataclass(frozen=True)
class Command:
    words: Tuple[str, ...]
    expect: str  # EMPTY | ADDED | ADDR

    @property
    def line(self) -> str:
        return " ".join(self.words)


@dataclass(frozen=True)
class Removal:
    """A server to delete: it is in maintenance (or goes there in this plan) and takes no new traffic."""

    backend: str
    name: str
    fresh: bool  # removed by this plan (waited for); else left over from an earlier apply (one try)

    @property
    def target(self) -> str:
        return f"{self.backend}/{self.name}"


@dataclass(frozen=True)
class Plan:
    commands: Tuple[Command, ...]  # sent in this order; each answer must read as `expect`
    removals: Tuple[Removal, ...]  # then deleted, each once its sessions are done
    added: Tuple[str, ...] = ()  # "backend/server"
    removed: Tuple[str, ...] = ()
    updated: Tuple[str, ...] = ()

    def any(self) -> bool:
        return bool(self.added or self.removed or self.updated)


def changed_backends(old: ParsedConfig, new: ParsedConfig) -> Tuple[str, ...]:
    # A backend whose section did not change shares its servers with the last parse: `is` settles it.
    was, now = old.servers, new.servers
    return tuple(b for b in new.backends if was.get(b) is not now.get(b) and was.get(b) != now.get(b))


def plan_changes(
    old: ParsedConfig,
    new: ParsedConfig,
    running: ServersState,
    scope: Optional[Sequence[str]] = None,
) -> Plan:
    """Commands that bring `running` (the backends in `scope`, or all) to the servers `new` lists.

    The skeletons of `old` and `new` are known to be equal. A server line the runtime API cannot
    apply is fine while it stays as `old` had it (HAProxy runs it from the config); new or changed,
    it raises NeedReload.
    """
    commands: List[Command] = []
    removals: List[Removal] = []
    added: List[str] = []
    removed: List[str] = []
    updated: List[str] = []
    for backend in new.backends if scope is None else scope:
        desired = new.servers.get(backend, {})
        running_now = running.get(backend, {})
        before = old.servers.get(backend, {})
        for name, line in desired.items():
            target = f"{backend}/{name}"
            if not line.runtime_ok:
                if before.get(name) != line:
                    raise NeedReload(f"server {target} needs a reload: {line.problem}")
                continue
            state = running_now.get(name)
            if state is None:
                # HAProxy creates it in maintenance: state ready starts its traffic (what the
                # deprecated `enable server` does).
                commands.append(Command(("add", "server", target, *line.args), ADDED))
                if "check" in line.options:
                    commands.append(Command(("enable", "health", target), EMPTY))
                if "agent-check" in line.options:
                    commands.append(Command(("enable", "agent", target), EMPTY))
                commands.append(Command(("set", "server", target, "state", "ready"), EMPTY))
                if backend in new.dynamic_cookies:  # else HAProxy gives the new server no cookie
                    commands.append(Command(("enable", "dynamic-cookie", "backend", backend), EMPTY))
                added.append(target)
                continue
            old_line = before.get(name)
            # A server left draining by an earlier apply has no line in the live file: it was added
            # with the template's options of that time, which only plain lines (no options) can match.
            if (old_line.options if old_line is not None else ()) != line.options:
                raise NeedReload(f"server {target} options changed")
            changes = []
            if (state.address, state.port) != (line.address, line.port):
                words = ("set", "server", target, "addr", line.address or "", "port", str(line.port or 0))
                changes.append(Command(words, ADDR))
            if state.weight != line.weight:
                changes.append(Command(("set", "weight", target, str(line.weight)), EMPTY))
            if state.admin_state & (ADMIN_FMAINT | ADMIN_FDRAIN):  # back before its drain ended
                changes.append(Command(("set", "server", target, "state", "ready"), EMPTY))
            if changes:
                commands += changes
                updated.append(target)
        for name, state in running_now.items():
            if name not in desired:
                fresh = not state.in_maintenance
                if fresh:  # no new requests from now on
                    commands.append(Command(("set", "server", f"{backend}/{name}", "state", "maint"), EMPTY))
                    removed.append(f"{backend}/{name}")
                removals.append(Removal(backend, name, fresh))
    return Plan(tuple(commands), tuple(removals), tuple(added), tuple(removed), tuple(updated))


def answer_ok(expect: str, answer: str, version: Version) -> bool:
    """Whether `answer` (stripped) is the success of a command that expects `expect`."""
    if expect == ADDED:
        return answer.startswith("New server registered")
    if expect == ADDR:
        # 2.6: "IP changed from ... to ...", "port changed from ...", "no need to change the addr".
        return "changed" in answer or "no need" in answer or (not answer and version >= SINCE_3_0)
    if expect == REMOVABLE:
        return answer.startswith("Done")
    return not answer


def removal_steps(removal: Removal, wait_ms: int, version: Version) -> Tuple[Command, ...]:
    """What deletes a server in maintenance: on 3.0 and later `wait <ms> srv-removable` for up to
    `wait_ms` first (none when 0), then `del server`; before 3.0 `del server` alone (apply retries it
    while the server is busy)."""
    if version >= SINCE_3_0 and wait_ms > 0:
        return (
            Command(("wait", str(wait_ms), "srv-removable", removal.target), REMOVABLE),
            deletion(removal),
        )
    return (deletion(removal),)


def deletion(removal: Removal) -> Command:
    return Command(("del", "server", removal.target), EMPTY)


def deleted(answer: str) -> Optional[str]:
    """None when `del server` deleted the server (or it is already gone), else HAProxy's reason."""
    if answer.startswith("Server deleted") or "No such server" in answer:
        return None
    return answer


def busy(reason: str) -> bool:
    """A `del server` refusal that time cures: the server still has sessions or a queue."""
    return "connection" in reason or "queue" in reason


def verify(new: ParsedConfig, running: ServersState, scope: Optional[Sequence[str]] = None) -> Optional[str]:
    """What `show servers state` shows wrong after a plan ran, or None: every wanted server ready at its
    address and weight, and any other server in maintenance (still draining)."""
    for backend in new.backends if scope is None else scope:
        running_now = running.get(backend, {})
        wanted = new.servers.get(backend, {})
        for name, line in wanted.items():
            if not line.runtime_ok:
                continue
            state = running_now.get(name)
            if state is None:
                return f"{backend}/{name} is missing"
            if (state.address, state.port, state.weight) != (line.address, line.port, line.weight):
                return (
                    f"{backend}/{name} runs {state.address}:{state.port} weight {state.weight}, "
                    f"wanted {line.address}:{line.port} weight {line.weight}"
                )
            if not state.ready:
                return f"{backend}/{name} is not ready (admin state {state.admin_state})"
        for name, state in running_now.items():
            if name not in wanted and not state.in_maintenance:
                return f"{backend}/{name} should be gone but takes traffic"
    return None
