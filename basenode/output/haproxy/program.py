"""HAProxy the program: its command line under basenode's supervisor, `haproxy -c`, and its
lifecycle through the master CLI (running, seamless reload, restart)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from ...config import Program, Settings
from .errors import ApplyError, CheckFailed, RuntimeAPIError
from .runtime import ProcInfo, command, show_proc, stats_pid

CHECK_TIMEOUT = 60.0
RUNNING_SETTLE = 2.0  # seconds a refusing master socket gets before HAProxy counts as not running
RELOAD_TIMEOUT = 15.0
RESTART_TIMEOUT = 30.0


def program(settings: Settings, depends_on: Sequence[str] = ()) -> Program:
    """HAProxy in master-worker mode (`-W`) under basenode's supervisor.

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
    """Seamless master-worker reload; returns once a new worker answers on the stats socket."""
    master = settings.haproxy_master_socket
    before = show_proc(master)
    with contextlib.suppress(RuntimeAPIError):
        command(master, ("reload",))  # the master re-executes itself and closes this connection

    def reloaded(now: ProcInfo) -> bool:
        if now.failed_reloads > before.failed_reloads:
            raise ApplyError(
                "HAProxy rejected the reload (the previous workers keep serving, the old config file "
                "is back); its log says why, e.g. a port already in use"
            )
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
            now.master_pid != before.master_pid
            and bool(now.workers)
            and stats_pid(settings.haproxy_stats_socket) in now.workers
        ),
    )
    if after is not None:
        return after
    raise ApplyError(f"HAProxy did not come back within {timeout:.0f}s of the restart (is it supervised?)")


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
