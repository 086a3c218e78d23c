"""HAProxy the program: its command line under basenode's supervisor, `haproxy -c`, and its
lifecycle through the master CLI (running, seamless reload)."""

from __future__ import annotations

import contextlib
import functools
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from ...config import Program, Settings
from .errors import ApplyError, CheckFailed, RuntimeAPIError
from .runtime import ProcInfo, Version, command, parse_reload, parse_version, show_proc, stats_pid

CHECK_TIMEOUT = 60.0
RUNNING_SETTLE = 2.0  # seconds a refusing master socket gets before HAProxy counts as not running
RELOAD_TIMEOUT = 15.0
RELOAD_STATUS_SINCE: Version = (2, 7)  # the master CLI's `reload` answers "Success=0|1"


def program(settings: Settings, depends_on: Sequence[str] = ()) -> Program:
    """HAProxy in master-worker mode (`-W`) under basenode's supervisor.

    Stopped with SIGUSR1 (soft stop: workers finish their sessions, bounded by hard-stop-after);
    restarted whenever it exits.
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


# ---------------------------------------------------------------------------------------------
# The check


def check(haproxy_bin: str, cfg_path: Path, timeout: float = CHECK_TIMEOUT) -> None:
    """`haproxy -c -f cfg_path`; CheckFailed with HAProxy's alert lines when it rejects the file."""
    finish_check(start_check(haproxy_bin, cfg_path), haproxy_bin, timeout)


def start_check(haproxy_bin: str, cfg_path: Path) -> subprocess.Popen:
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


def finish_check(proc: subprocess.Popen, haproxy_bin: str, timeout: float = CHECK_TIMEOUT) -> None:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise CheckFailed(f"{haproxy_bin} -c did not finish within {timeout:.0f}s") from None
    if proc.returncode != 0:
        raise CheckFailed(alerts(output.decode("utf-8", "replace")) or f"exit status {proc.returncode}")


def alerts(output: str) -> str:
    """HAProxy's [ALERT] lines without the pid prefix, joined; the raw tail when there are none."""
    found = []
    for line in output.splitlines():
        if "[ALERT]" in line:
            found.append(re.sub(r"^\[ALERT\]\s*(\(\d+\)\s*)?:\s*", "", line.strip()))
    if found:
        return " | ".join(found)
    return " | ".join(line.strip() for line in output.splitlines()[-5:] if line.strip())


def version(haproxy_bin: str) -> Version:
    """(major, minor) of `haproxy_bin`, from `haproxy -v` once per binary; (0, 0) while it cannot be
    run, which gets 2.6's behaviour (asked again next time)."""
    try:
        return _version(haproxy_bin)
    except (OSError, subprocess.SubprocessError, ValueError):
        return (0, 0)


@functools.lru_cache(maxsize=4)
def _version(haproxy_bin: str) -> Version:
    done = subprocess.run(
        [haproxy_bin, "-v"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CHECK_TIMEOUT
    )
    found = parse_version(done.stdout)
    if found == (0, 0):
        raise ValueError(f"{haproxy_bin} -v: no version in {done.stdout[:200]!r}")  # not cached
    return found


# ---------------------------------------------------------------------------------------------
# Lifecycle


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


def reload(settings: Settings, timeout: float = RELOAD_TIMEOUT) -> ProcInfo:
    """Seamless master-worker reload; returns once a new worker answers on the stats socket.

    From 2.7 the master answers `reload` with its status once the new config is loaded, and a
    refused one fails at once with HAProxy's own alerts; 2.6 closes the connection without an answer
    (the master re-executes itself), and `show proc`'s failed-reload count tells.
    """
    master = settings.haproxy_master_socket
    before = show_proc(master)
    status = None
    if version(settings.haproxy_bin) >= RELOAD_STATUS_SINCE:
        with contextlib.suppress(RuntimeAPIError):  # no answer: polling below still tells
            status = parse_reload(command(master, ("reload",), timeout=timeout))
    else:
        with contextlib.suppress(RuntimeAPIError):
            command(master, ("reload",))
    refused = "HAProxy rejected the reload (the previous workers keep serving, the old config file is back)"
    if status is not None and not status.success:
        raise ApplyError(f"{refused}: {alerts(status.log) or 'its log says why'}")

    def reloaded(now: ProcInfo) -> bool:
        if now.failed_reloads > before.failed_reloads:
            raise ApplyError(f"{refused}; its log says why, e.g. a port already in use")
        fresh = [pid for pid in now.workers if pid not in before.workers]
        return (
            now.reloads > before.reloads
            and bool(fresh)
            and stats_pid(settings.haproxy_stats_socket) == fresh[0]
        )

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
