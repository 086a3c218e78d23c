"""HAProxy: check a candidate config, write it atomically, and apply it with as little disruption as possible.

How a new config text reaches the running HAProxy (`apply`):

1. The text goes to a candidate file in the state dir and `haproxy -c` checks it. A rejected
   candidate is removed; the live file and the running process are untouched (CheckFailed,
   with HAProxy's own message).
2. The candidate is renamed over the live file, so the file on disk always equals what runs and a
   restarted HAProxy comes back identical.
3. If the config differs from the live one only in `server` lines of existing backends, the
   running worker is brought in step through the runtime API: new servers `add server` (with the
   arguments of their config line) then `enable server`; removed servers go to maintenance, get a
   short bounded time to finish their sessions, then `del server`; a changed address, port or
   weight is `set` in place. `show servers state` then verifies the result; any API error or
   mismatch falls back to a reload.
4. Anything else (a route added or removed, a template edit) is a seamless master-worker reload:
   `reload` on the master CLI, and we wait until the new worker answers on the stats socket.

The runtime API and master CLI speak one command per connection over the unix sockets in the
state dir (mode 0600). Nothing here knows about Consul.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

from .config import Program, Settings
from .files import promote, write_atomic
from .snapshot import Snapshot

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 60.0
SOCKET_TIMEOUT = 5.0
RUNNING_SETTLE = 2.0  # seconds a refusing master socket gets before HAProxy counts as not running
# How long apply waits for a removed server's sessions to end so that it can be deleted at once.
# Waiting is not what protects those sessions (maintenance already stops new traffic and never cuts
# a session); it only tidies up. A longer session (a database pool's connection) keeps running and
# its server, in maintenance, is deleted by a later apply.
DRAIN_TIMEOUT = 0.5
RELOAD_TIMEOUT = 15.0
RESTART_TIMEOUT = 30.0

# Section keywords of an HAProxy config file; a line starting with one opens a new section.
SECTIONS = frozenset(
    (
        "global", "defaults", "frontend", "backend", "listen", "resolvers", "peers", "userlist",
        "mailers", "program", "http-errors", "ring", "cache", "fcgi-app", "dynamic-update",
    )
)  # fmt: skip
BACKEND_SECTIONS = ("backend", "listen")
# srv_admin_state bits (management guide, "show servers state").
ADMIN_FMAINT = 0x01  # forced into maintenance from the CLI
ADMIN_CMAINT = 0x04  # "disabled" in the config
ADMIN_FDRAIN = 0x08
ADMIN_RMAINT = 0x20  # no address (resolution failed)


class CheckFailed(Exception):
    """`haproxy -c` rejected a config; str() is HAProxy's own message."""


class ApplyError(Exception):
    """The config was checked and written but could not be made to run (reload or restart failed)."""


class RuntimeAPIError(ApplyError):
    """The runtime API or master CLI refused a command or could not be reached."""


class _NeedReload(Exception):
    """The change cannot be made through the runtime API (internal: apply reloads instead)."""


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


# ---------------------------------------------------------------------------------------------
# Files and the check


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


def check(haproxy_bin: str, cfg_path: Path, timeout: float = CHECK_TIMEOUT) -> None:
    """`haproxy -c -f cfg_path`; CheckFailed with HAProxy's alert lines when it rejects the file."""
    _finish_check(_start_check(haproxy_bin, cfg_path), haproxy_bin, timeout)


def _start_check(haproxy_bin: str, cfg_path: Path) -> subprocess.Popen:
    try:
        return subprocess.Popen(
            [haproxy_bin, "-c", "-f", str(cfg_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    except FileNotFoundError:
        raise CheckFailed(f"{haproxy_bin}: not found") from None
    except PermissionError as e:
        raise CheckFailed(f"{haproxy_bin}: {e.strerror}") from None


def _finish_check(proc: subprocess.Popen, haproxy_bin: str, timeout: float = CHECK_TIMEOUT) -> None:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise CheckFailed(f"{haproxy_bin} -c did not finish within {timeout:.0f}s") from None
    if proc.returncode != 0:
        raise CheckFailed(_alerts(output.decode("utf-8", "replace")) or f"exit status {proc.returncode}")


def _alerts(output: str) -> str:
    """HAProxy's [ALERT] lines without the pid prefix, joined; the raw tail when there are none."""
    alerts = []
    for line in output.splitlines():
        if "[ALERT]" in line:
            alerts.append(re.sub(r"^\[ALERT\]\s*(\(\d+\)\s*)?:\s*", "", line.strip()))
    if alerts:
        return " | ".join(alerts)
    return " | ".join(line.strip() for line in output.splitlines()[-5:] if line.strip())


# ---------------------------------------------------------------------------------------------
# The supervised program


def program(settings: Settings, depends_on: Sequence[str] = ()) -> Program:
    """HAProxy in master-worker mode under basenode's supervisor.

    Stopped with SIGUSR1 (soft stop: workers finish their sessions, bounded by hard-stop-after);
    restarted whenever it exits, which is also how apply_mode="restart" gets its new process.
    """
    return Program(
        name="haproxy",
        command=(
            settings.haproxy_bin,
            "-W",
            "-S",
            f"{settings.haproxy_master_socket},mode,600",
            "-f",
            str(settings.haproxy_cfg),
        ),
        autorestart="always",
        startsecs=0.5,  # `haproxy -c` already passed: a start failure shows at once
        startretries=1000000,
        backoff_initial=0.1,
        backoff_max=5.0,
        stop_signal=signal.SIGUSR1,
        stop_timeout=10.0,
        depends_on=tuple(depends_on),
    )


def running(settings: Settings, settle: float = RUNNING_SETTLE) -> bool:
    """True when the master CLI answers.

    A socket file that refuses connections is a master between two lives (it re-executes itself
    on every reload), not an absent one: it gets `settle` seconds to answer. Taking that window for
    "not running" would only write the file, and HAProxy would miss the change.
    """
    socket_path = settings.haproxy_master_socket
    deadline = time.monotonic() + settle
    while True:
        try:
            show_proc(socket_path, timeout=2.0)
            return True
        except RuntimeAPIError:
            if not socket_path.exists() or time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# Runtime API (stats socket) and master CLI


def command(socket_path: Path, line: str, timeout: float = SOCKET_TIMEOUT) -> str:
    """Send one command, return HAProxy's whole answer. RuntimeAPIError if the socket does not answer."""
    if "\n" in line or "\r" in line:
        raise ValueError(f"a runtime API command is one line: {line!r}")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            sock.sendall(line.encode() + b"\n")
            # Non-interactive mode: HAProxy answers, then closes once it has seen our end of input.
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
    except OSError as e:
        raise RuntimeAPIError(f"{socket_path}: {line.split()[0]}: {e}") from None
    return b"".join(chunks).decode("utf-8", "replace")


def _expect_empty(socket_path: Path, line: str) -> None:
    answer = command(socket_path, line).strip()
    if answer:
        raise RuntimeAPIError(f"{line}: {answer}")


@dataclass(frozen=True)
class ServerState:
    backend: str
    name: str
    address: str  # "-" when it has none
    port: int
    op_state: int  # 0 down, 1 starting, 2 running, 3 stopping
    admin_state: int  # ADMIN_* bits
    weight: int  # user-visible weight

    @property
    def in_maintenance(self) -> bool:
        return bool(self.admin_state & ADMIN_FMAINT)

    @property
    def ready(self) -> bool:
        """Not held out by an operator (our maint/drain) or by the config."""
        return not self.admin_state & (ADMIN_FMAINT | ADMIN_FDRAIN | ADMIN_CMAINT)


def show_servers_state(socket_path: Path, backend: Optional[str] = None) -> Dict[str, Dict[str, ServerState]]:
    """backend -> server name -> state, from `show servers state` (format version 1)."""
    answer = command(socket_path, "show servers state" + (f" {backend}" if backend else ""))
    lines = answer.splitlines()
    if not lines or lines[0].strip() != "1":
        raise RuntimeAPIError(f"show servers state: unexpected answer {answer[:200]!r}")
    columns: List[str] = []
    result: Dict[str, Dict[str, ServerState]] = {}
    for line in lines[1:]:
        if line.startswith("#"):
            columns = line[1:].split()
            continue
        if not line.strip():
            continue
        row = dict(zip(columns, line.split()))
        try:
            state = ServerState(
                backend=row["be_name"],
                name=row["srv_name"],
                address=row["srv_addr"],
                port=int(row["srv_port"]),
                op_state=int(row["srv_op_state"]),
                admin_state=int(row["srv_admin_state"]),
                weight=int(row["srv_uweight"]),
            )
        except (KeyError, ValueError):
            raise RuntimeAPIError(f"show servers state: cannot parse {line!r}") from None
        result.setdefault(state.backend, {})[state.name] = state
    return result


def show_info(socket_path: Path) -> Dict[str, str]:
    info = {}
    for line in command(socket_path, "show info").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def add_server(socket_path: Path, backend: str, name: str, args: Sequence[str]) -> None:
    """Create a server (HAProxy creates it in maintenance: `enable_server` starts its traffic)."""
    line = f"add server {backend}/{name} {' '.join(args)}"
    answer = command(socket_path, line).strip()
    if not answer.startswith("New server registered"):
        raise RuntimeAPIError(f"{line}: {answer}")


def del_server(socket_path: Path, backend: str, name: str) -> str:
    """Delete a server in maintenance; returns "" when deleted, else HAProxy's reason (still busy...)."""
    answer = command(socket_path, f"del server {backend}/{name}").strip()
    return "" if answer.startswith("Server deleted") else answer


def set_server_state(socket_path: Path, backend: str, name: str, state: str) -> None:
    if state not in ("ready", "drain", "maint"):
        raise ValueError(f"state must be ready, drain or maint, got {state!r}")
    _expect_empty(socket_path, f"set server {backend}/{name} state {state}")


def set_server_addr(socket_path: Path, backend: str, name: str, address: str, port: int) -> None:
    line = f"set server {backend}/{name} addr {address} port {port}"
    answer = command(socket_path, line).strip()
    # Success reads "IP changed from ... to ..., port changed from ..." or "no need to change ...".
    if "changed" not in answer and "no need" not in answer:
        raise RuntimeAPIError(f"{line}: {answer}")


def set_weight(socket_path: Path, backend: str, name: str, weight: int) -> None:
    _expect_empty(socket_path, f"set weight {backend}/{name} {weight}")


def enable_server(socket_path: Path, backend: str, name: str) -> None:
    _expect_empty(socket_path, f"enable server {backend}/{name}")


def disable_server(socket_path: Path, backend: str, name: str) -> None:
    _expect_empty(socket_path, f"disable server {backend}/{name}")


def enable_health(socket_path: Path, backend: str, name: str) -> None:
    _expect_empty(socket_path, f"enable health {backend}/{name}")


def enable_agent(socket_path: Path, backend: str, name: str) -> None:
    _expect_empty(socket_path, f"enable agent {backend}/{name}")


@dataclass(frozen=True)
class ProcInfo:
    """The master CLI's `show proc`."""

    master_pid: int
    reloads: int
    failed_reloads: int
    workers: Tuple[int, ...]  # current workers
    old_workers: Tuple[int, ...]  # workers of earlier configs still finishing their sessions


def show_proc(master_socket: Path, timeout: float = SOCKET_TIMEOUT) -> ProcInfo:
    answer = command(master_socket, "show proc", timeout=timeout)
    master_pid = reloads = failed = None
    workers: List[int] = []
    old: List[int] = []
    section = "master"
    for line in answer.splitlines():
        text = line.strip()
        if text.startswith("#"):
            name = text.lstrip("#").strip()
            section = {"workers": "workers", "old workers": "old", "programs": "programs"}.get(name, section)
            continue
        parts = text.split()
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        if parts[1] == "master":
            master_pid, reloads = int(parts[0]), int(parts[2])
            m = re.search(r"failed:\s*(\d+)", text)
            failed = int(m.group(1)) if m else 0
        elif parts[1] == "worker":
            (workers if section == "workers" else old).append(int(parts[0]))
    if master_pid is None or reloads is None or failed is None:
        raise RuntimeAPIError(f"show proc: unexpected answer {answer[:200]!r}")
    return ProcInfo(master_pid, reloads, failed, tuple(workers), tuple(old))


def reload(settings: Settings, timeout: float = RELOAD_TIMEOUT) -> ProcInfo:
    """Seamless master-worker reload; returns once a new worker answers on the stats socket."""
    master = settings.haproxy_master_socket
    before = show_proc(master)
    with contextlib.suppress(RuntimeAPIError):
        command(master, "reload")  # the master re-executes itself and closes this connection

    def reloaded(now: ProcInfo) -> bool:
        if now.failed_reloads > before.failed_reloads:
            raise ApplyError(
                "HAProxy rejected the reload (the previous workers keep serving, the old config file "
                "is back); its log says why, e.g. a port already in use"
            )
        fresh = [pid for pid in now.workers if pid not in before.workers]
        return now.reloads > before.reloads and bool(fresh) and _stats_pid(settings) == fresh[0]

    after = _wait_for_master(master, timeout, reloaded)
    if after is None:
        raise ApplyError(f"no new HAProxy worker answered within {timeout:.0f}s of the reload")
    return after


def _wait_for_master(master: Path, timeout: float, done: Callable[[ProcInfo], bool]) -> Optional[ProcInfo]:
    """Poll the master CLI until `done(show proc)`; None after `timeout`. A refused connection is a
    master re-executing itself, not an answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.01)
        try:
            now = show_proc(master, timeout=1.0)
        except RuntimeAPIError:
            continue
        if done(now):
            return now
    return None


def _stats_pid(settings: Settings) -> Optional[int]:
    try:
        return int(show_info(settings.haproxy_stats_socket).get("Pid", "0"))
    except (RuntimeAPIError, ValueError):
        return None


def restart(settings: Settings, timeout: float = RESTART_TIMEOUT) -> ProcInfo:
    """Stop HAProxy (the seed's way: SIGTERM, sessions cut) and wait until the supervisor has started
    a new one. Only meaningful under `basenode run`, whose supervisor restarts HAProxy on exit."""
    master = settings.haproxy_master_socket
    before = show_proc(master)
    os.kill(before.master_pid, signal.SIGTERM)
    after = _wait_for_master(
        master,
        timeout,
        lambda now: (
            now.master_pid != before.master_pid and bool(now.workers) and _stats_pid(settings) in now.workers
        ),
    )
    if after is not None:
        return after
    raise ApplyError(f"HAProxy did not come back within {timeout:.0f}s of the restart (is it supervised?)")


# ---------------------------------------------------------------------------------------------
# Reading a rendered config: which lines the runtime API can change


@dataclass(frozen=True)
class ServerLine:
    """A `server` line of a backend, split into what the runtime API can set and the rest."""

    backend: str
    name: str
    address: Optional[str]  # normalised IP; None when the line names a host or anything unusual
    port: Optional[int]
    weight: int
    options: Tuple[str, ...]  # every argument except the address and "weight N"
    args: Tuple[str, ...]  # the arguments after the name, as written (for `add server`)

    @property
    def runtime_ok(self) -> bool:
        # Dynamic servers are never resolved by name (2.6 initialises them with init-addr none), and
        # "disabled" would fight with our enable.
        return self.address is not None and self.port is not None and "disabled" not in self.options


@dataclass(frozen=True)
class ParsedConfig:
    # A digest of every line but the backends' server lines: equal skeletons => runtime apply. A digest,
    # not the lines: at 1,000 routes the lines alone would keep ~1.5 MB alive per cached parse.
    skeleton: bytes
    backends: Tuple[str, ...]
    servers: Dict[str, Dict[str, ServerLine]] = field(default_factory=dict)
    # Backends with `cookie ... dynamic`: HAProxy gives a server added at runtime its cookie only when
    # told to (`enable dynamic-cookie backend`).
    dynamic_cookies: FrozenSet[str] = frozenset()


# One entry: the candidate applied now is the live text of the next apply, which then finds it
# here; the new candidate replaces it. At 1,000 routes a parsed config weighs ~4 MB.
@functools.lru_cache(maxsize=1)
def parse_config(text: str) -> ParsedConfig:
    """Split a config into its skeleton and its backends' server lines. The result is shared (cached):
    treat it as read-only."""
    import hashlib  # here, not at the top: PID 1 imports this module and must not load OpenSSL

    skeleton = hashlib.blake2b(digest_size=16)
    backends: List[str] = []
    servers: Dict[str, Dict[str, ServerLine]] = {}
    dynamic_cookies = set()
    section, name = "", ""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip() if "#" in raw and not _quoted(raw) else raw.strip()
        words = line.split()
        if words and words[0] in SECTIONS:
            section, name = words[0], (words[1] if len(words) > 1 else "")
            if section in BACKEND_SECTIONS:
                backends.append(name)
                servers.setdefault(name, {})
        elif section in BACKEND_SECTIONS and len(words) >= 3 and words[0] == "server" and not _quoted(raw):
            server = _server_line(name, words)
            servers[name][server.name] = server
            continue
        elif section in BACKEND_SECTIONS and words[:1] == ["cookie"] and "dynamic" in words[2:]:
            dynamic_cookies.add(name)
        skeleton.update(line.encode() + b"\n")
    return ParsedConfig(skeleton.digest(), tuple(backends), servers, frozenset(dynamic_cookies))


def _quoted(raw: str) -> bool:
    return any(c in raw for c in "\"'\\")


def _server_line(backend: str, words: List[str]) -> ServerLine:
    name, endpoint, rest = words[1], words[2], words[3:]
    weight, options = 1, []
    i = 0
    while i < len(rest):
        if rest[i] == "weight" and i + 1 < len(rest) and rest[i + 1].isdigit():
            weight = int(rest[i + 1])
            i += 2
            continue
        options.append(rest[i])
        i += 1
    address, port = _split_endpoint(endpoint)
    return ServerLine(backend, name, address, port, weight, tuple(options), tuple(words[2:]))


def _split_endpoint(endpoint: str) -> Tuple[Optional[str], Optional[int]]:
    if endpoint.startswith("["):
        host, sep, port = endpoint[1:].partition("]:")
    else:
        host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        return None, None
    try:
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        return None, int(port)


# ---------------------------------------------------------------------------------------------
# Apply


@dataclass
class _Changes:
    added: List[str] = field(default_factory=list)
    removed: List[str] = field(default_factory=list)
    updated: List[str] = field(default_factory=list)
    draining: List[str] = field(default_factory=list)

    def any(self) -> bool:
        return bool(self.added or self.removed or self.updated)


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
        checking = _start_check(settings.haproxy_bin, candidate)
        try:
            if mode == "runtime" and live_text is not None:
                parsed = (parse_config(live_text), parse_config(text))  # while haproxy -c runs
        finally:
            try:
                _finish_check(checking, settings.haproxy_bin)
            except CheckFailed:
                with contextlib.suppress(OSError):
                    candidate.unlink()
                raise

    def result(how: str, changes: Optional[_Changes] = None, reason: str = "") -> ApplyResult:
        c = changes or _Changes()
        outcome = ApplyResult(
            how=how,
            seconds=time.monotonic() - started,
            added=tuple(c.added),
            removed=tuple(c.removed),
            updated=tuple(c.updated),
            draining=tuple(c.draining),
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
        scope = _changed_backends(old, new) if changed else None
        changes = _sync_servers(settings.haproxy_stats_socket, old, new, drain_timeout, scope)
        _verify(settings.haproxy_stats_socket, new, scope)
    except _NeedReload as e:
        _reload_or_restore(settings, live_text)
        return result("reload", reason=str(e))
    except RuntimeAPIError as e:
        log.warning("haproxy: runtime API apply failed, reloading instead: %s", e)
        _reload_or_restore(settings, live_text)
        return result("reload", reason=f"runtime API failed: {e}")
    return result("runtime" if changes.any() else "unchanged", changes)


def _reload_or_restore(settings: Settings, live_text: Optional[str]) -> None:
    try:
        reload(settings)
    except ApplyError:
        # Keep "the file on disk equals what runs": the old workers still run the old text.
        if live_text is not None:
            _write(settings.haproxy_cfg, live_text)
        raise


def _changed_backends(old: ParsedConfig, new: ParsedConfig) -> Tuple[str, ...]:
    return tuple(b for b in new.backends if old.servers.get(b) != new.servers.get(b))


def _servers_state(sock: Path, scope: Optional[Sequence[str]]) -> Dict[str, Dict[str, ServerState]]:
    """All backends (scope None), or just those in scope: one small query each when they are few."""
    if scope is None or len(scope) > 20:
        return show_servers_state(sock)
    actual: Dict[str, Dict[str, ServerState]] = {}
    for backend in scope:
        actual.update(show_servers_state(sock, backend))
    return actual


def _sync_servers(
    sock: Path,
    old: ParsedConfig,
    new: ParsedConfig,
    drain_timeout: float,
    scope: Optional[Sequence[str]] = None,
) -> _Changes:
    """Bring the running servers (of the backends in scope) to the ones `new` lists; the skeletons
    are known to be equal."""
    actual = _servers_state(sock, scope)
    changes = _Changes()
    to_remove: List[Tuple[str, str]] = []
    for backend in new.backends if scope is None else scope:
        desired = new.servers.get(backend, {})
        running_now = actual.get(backend, {})
        before = old.servers.get(backend, {})
        for name, line in desired.items():
            if not line.runtime_ok:
                if before.get(name) != line:
                    raise _NeedReload(f"server {backend}/{name} needs a reload (host name or options)")
                continue
            state = running_now.get(name)
            if state is None:
                add_server(sock, backend, name, line.args)
                if "check" in line.options:
                    enable_health(sock, backend, name)
                if "agent-check" in line.options:
                    enable_agent(sock, backend, name)
                enable_server(sock, backend, name)
                if backend in new.dynamic_cookies:
                    _expect_empty(sock, f"enable dynamic-cookie backend {backend}")
                changes.added.append(f"{backend}/{name}")
                continue
            old_line = before.get(name)
            # A server left draining by an earlier apply has no line in the live file: it was added
            # with the template's options of that time, which only plain lines (no options) can match.
            if (old_line.options if old_line is not None else ()) != line.options:
                raise _NeedReload(f"server {backend}/{name} options changed")
            updated = False
            if (state.address, state.port) != (line.address, line.port):
                set_server_addr(sock, backend, name, line.address or "", line.port or 0)
                updated = True
            if state.weight != line.weight:
                set_weight(sock, backend, name, line.weight)
                updated = True
            if state.admin_state & (ADMIN_FMAINT | ADMIN_FDRAIN):
                set_server_state(sock, backend, name, "ready")  # back before its drain ended
                updated = True
            if updated:
                changes.updated.append(f"{backend}/{name}")
        for name, state in running_now.items():
            if name not in desired:
                if not state.in_maintenance:
                    set_server_state(sock, backend, name, "maint")  # no new requests from now on
                    changes.removed.append(f"{backend}/{name}")
                to_remove.append((backend, name))
    changes.draining = _drain_and_delete(sock, to_remove, changes.removed, drain_timeout)
    return changes


def _drain_and_delete(
    sock: Path, servers: List[Tuple[str, str]], fresh: List[str], drain_timeout: float
) -> List[str]:
    """`del server` each one as soon as its sessions are done; returns those still busy at the deadline.

    They stay in maintenance (no new traffic) and the next apply tries again. Only servers removed by
    this apply (`fresh`) are waited for; those left over from an earlier apply get one attempt.
    """
    pending = list(servers)
    deadline = time.monotonic() + drain_timeout
    pause = 0.002
    left: List[str] = []
    rounds = 0
    while pending:
        busy = []
        for backend, name in pending:
            reason = del_server(sock, backend, name)
            if not reason or "No such server" in reason:
                continue
            if "connection" not in reason and "queue" not in reason:
                raise RuntimeAPIError(f"del server {backend}/{name}: {reason}")
            if f"{backend}/{name}" in fresh and time.monotonic() < deadline:
                busy.append((backend, name))
            else:
                left.append(f"{backend}/{name}")
        pending = busy
        rounds += 1
        if pending:
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
            if rounds % 4 == 0:
                for backend, name in pending:
                    _purge_idle(sock, backend, name)
    if left:
        log.info("haproxy: %d removed servers still have sessions; deleting them later", len(left))
    return left


def _purge_idle(sock: Path, backend: str, name: str) -> None:
    """Close a server's idle connections: HAProxy does so when a server enters maintenance, but a
    request that was in flight then leaves its connection idle afterwards, where it would stay until
    the pool's purge (5 s). Leaving maintenance for drain (which takes no new traffic: there is no
    persistence) and entering it again closes them."""
    set_server_state(sock, backend, name, "drain")
    set_server_state(sock, backend, name, "maint")


def _verify(sock: Path, new: ParsedConfig, scope: Optional[Sequence[str]] = None) -> None:
    """`show servers state` must show every wanted server ready at its address and weight, and any other
    server in maintenance (still draining)."""
    actual = _servers_state(sock, scope)
    for backend in new.backends if scope is None else scope:
        running_now = actual.get(backend, {})
        for name, line in new.servers.get(backend, {}).items():
            if not line.runtime_ok:
                continue
            state = running_now.get(name)
            if state is None:
                raise RuntimeAPIError(f"verify: {backend}/{name} is missing")
            if (state.address, state.port, state.weight) != (line.address, line.port, line.weight):
                raise RuntimeAPIError(
                    f"verify: {backend}/{name} runs {state.address}:{state.port} weight {state.weight}, "
                    f"wanted {line.address}:{line.port} weight {line.weight}"
                )
            if not state.ready:
                raise RuntimeAPIError(
                    f"verify: {backend}/{name} is not ready (admin state {state.admin_state})"
                )
        for name, state in running_now.items():
            if name not in new.servers.get(backend, {}) and not state.in_maintenance:
                raise RuntimeAPIError(f"verify: {backend}/{name} should be gone but takes traffic")
