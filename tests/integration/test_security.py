"""Hostile neighbours (issue 12): a local user, a child process or a bad value gets no further than its
own corner. Each test runs the real zipapp (as root, as the suite runs) and fails on basenode before
the fix it checks.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

from tests.conftest import ZIPAPP
from tests.support import procs
from tests.support.ports import free_port
from tests.support.waiting import eventually

NOBODY = pwd.getpwnam("nobody")


def clean_env(**extra: str) -> Dict[str, str]:
    """The test's environment without basenode's or Consul's settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BASENODE_", "CONSUL_"))}
    env["BASENODE_CONFIG"] = os.devnull
    env.update(extra)
    return env


def run_argv(state_dir: Path, *options: str, command: Sequence[str] = ("true",)) -> list:
    if not ZIPAPP.exists():
        pytest.fail(f"{ZIPAPP} is missing; run `make zipapp`", pytrace=False)
    return [
        sys.executable,
        str(ZIPAPP),
        "run",
        "--no-consul",
        "--no-haproxy",
        "--state-dir",
        str(state_dir),
        "--status-addr",
        f"127.0.0.1:{free_port()}",
        *options,
        "--",
        *command,
    ]


def run_once(
    state_dir: Path, *options: str, command: Sequence[str] = ("true",), env: Optional[Dict[str, str]] = None
) -> subprocess.CompletedProcess:
    """`basenode run ... -- COMMAND` to its end: (status, output)."""
    return subprocess.run(
        run_argv(state_dir, *options, command=command),
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- 6. the state dir ---------------------------------------------------------------------------


def test_a_world_writable_state_dir_of_ours_is_made_0700(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o1777)  # what `docker run --tmpfs /run/basenode` gives
    done = run_once(state)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(os.lstat(state).st_mode) == 0o700


def test_a_state_dir_owned_by_another_user_is_refused_before_anything_starts(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY.pw_uid, NOBODY.pw_gid)
    marker = tmp_path / "app-ran"
    done = run_once(state, command=("touch", str(marker)))
    assert done.returncode == 2
    assert str(state) in done.stderr and f"owner uid {NOBODY.pw_uid}" in done.stderr, done.stderr
    assert not marker.exists(), "the application ran in a state dir another user controls"
    assert not (state / "control.sock").exists()


def test_a_state_dir_that_is_a_symlink_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    state = tmp_path / "state"
    state.symlink_to(target)
    done = run_once(state)
    assert done.returncode == 2
    assert f"state dir {state} is a symlink" in done.stderr, done.stderr
    assert not (target / "control.sock").exists()


# --- 3. the status endpoint's bounds -----------------------------------------------------------


def sync_pid(node) -> int:
    found = [p for p in node.status()["programs"] if p["name"] == "sync"]
    assert found and found[0]["pid"], node.status()["programs"]
    return found[0]["pid"]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def open_idle(host: str, port: int, count: int) -> List[socket.socket]:
    held = []
    for _ in range(count):
        s = socket.create_connection((host, port), timeout=10)
        held.append(s)
    return held


def test_500_idle_connections_and_endless_headers_leave_health_answering_and_the_sync_process_bounded(
    consul_agent, backends, start_basenode
):
    a = backends.start("a")
    consul_agent.register("web", a.port, service_id="web-a")
    node = start_basenode(f"web:{free_port()}/http")
    eventually(node.healthy, timeout=60, what="/health 200")
    pid = sync_pid(node)
    threads_before, rss_before = procs.threads(pid), rss_kib(pid)
    host, port = node.status_addr.rsplit(":", 1)

    held = open_idle(host, int(port), 500)

    def endless_header(s: socket.socket) -> None:
        with contextlib.suppress(OSError):
            s.sendall(b"GET /health HTTP/1.1\r\nX-Filler: ")
            for _ in range(256):  # 4 MiB of one header that never ends
                s.sendall(b"a" * 16384)

    slow = open_idle(host, int(port), 40)
    senders = [threading.Thread(target=endless_header, args=(s,), daemon=True) for s in slow]
    try:
        for t in senders:
            t.start()
        code, health = node.health()  # answered while all of them are held
        assert code == 200, health
        assert procs.threads(pid) <= threads_before + 2, "a thread per connection"
        for t in senders:
            t.join(timeout=30)
        assert rss_kib(pid) - rss_before < 30 * 1024, "the endless headers were kept in memory"
        assert procs.threads(pid) <= threads_before + 2
    finally:
        for s in held + slow:
            s.close()
    assert node.health()[0] == 200
    assert node.proc.poll() is None


def test_a_status_addr_that_is_not_loopback_is_warned_about(consul_agent, start_basenode):
    port = free_port()
    other = start_basenode(f"web:{free_port()}", "--status-addr", f"0.0.0.0:{port}")
    eventually(lambda: "is not loopback" in other.output(), timeout=60, what="the warning")
    assert f"0.0.0.0:{port} is not loopback" in other.output()
