"""`basenode run` as a container's PID 1: the real CLI in its own PID namespace (and on a terminal).

`unshare --pid --fork --mount-proc python dist/basenode run --no-consul --no-haproxy -- COMMAND`
makes basenode PID 1 of a fresh namespace, as in a container; the test looks at that namespace
through /proc from outside, and COMMAND looks at it from inside.
"""

from __future__ import annotations

import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import List, Optional

import pytest

from tests.conftest import ZIPAPP
from tests.support.ports import free_port
from tests.support.supervise_helpers import ROOT, wait_for_text
from tests.support.waiting import eventually


def _env() -> dict:
    """The test's environment without settings that would change what `basenode run` does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BASENODE_", "CONSUL_"))}
    env["BASENODE_CONFIG"] = os.devnull  # an empty config: no programs but the COMMAND
    return env


def basenode_run(*command: str, config: Optional[Path] = None, app_output: Optional[str] = None) -> List[str]:
    if not ZIPAPP.exists():
        pytest.fail(f"{ZIPAPP} is missing; run `make zipapp`", pytrace=False)
    argv = [sys.executable, str(ZIPAPP), "run", "--no-consul", "--no-haproxy"]
    argv += ["--status-addr", f"127.0.0.1:{free_port()}"]
    if config is not None:
        argv += ["--config", str(config)]
    if app_output is not None:
        argv += ["--app-output", app_output]
    return [*argv, "--", *command]


class Namespace:
    """basenode running as PID 1 of a new PID namespace."""

    def __init__(self, *command: str) -> None:
        unshare = shutil.which("unshare")
        if unshare is None:
            pytest.fail("unshare (util-linux) not found", pytrace=False)
        self.proc = subprocess.Popen(
            # --kill-child: should the test kill unshare, the namespace goes with it.
            [unshare, "--pid", "--fork", "--mount-proc", "--kill-child", *basenode_run(*command)],
            cwd=ROOT,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def run(self, timeout: float = 60) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(f"still running after {timeout}s:\n{err.decode(errors='replace')}") from None
        return self.proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    def pid1(self) -> int:
        """basenode's pid as seen from outside: the child unshare forked."""
        return eventually(lambda: _children(self.proc.pid), what="unshare's child")[0]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def namespace():
    started: List[Namespace] = []

    def _start(*command: str) -> Namespace:
        ns = Namespace(*command)
        started.append(ns)
        return ns

    yield _start
    for ns in started:
        ns.close()


def _stat_fields(pid: str) -> List[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()


def _children(ppid: int) -> List[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(_stat_fields(entry)[1]) == ppid:
                    found.append(int(entry))
            except (OSError, IndexError):
                pass
    return found


def _in_namespace(ns_link: str) -> List[int]:
    """Host pids of every process whose PID namespace is ns_link ("pid:[...]")."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == ns_link:
                    found.append(int(entry))
            except OSError:
                pass
    return found


ORPHANS = r"""
echo "pid 1: $(tr '\0' ' ' < /proc/1/cmdline)"
for i in $(seq 50); do sh -c 'sleep 0.2 >/dev/null &'; done
i=0
while [ $i -lt 200 ]; do
    sleeps=$(grep -l '^Name:[[:space:]]*sleep$' /proc/[0-9]*/status 2>/dev/null | wc -l)
    [ "$sleeps" -eq 0 ] && break
    sleep 0.05; i=$((i+1))
done
echo "sleeps left: $sleeps"
echo "zombies: $(grep -l '^State:[[:space:]]*Z' /proc/[0-9]*/status 2>/dev/null | wc -l)"
"""


def test_basenode_is_pid_1_and_50_orphaned_grandchildren_leave_no_zombie(namespace):
    # The 50 sleeps lose their parent at once and are re-parented to PID 1: basenode must reap them.
    # Unreaped, they would stay as 50 zombies named sleep and the loop would give up after 10 s.
    status, out, err = namespace("sh", "-c", ORPHANS).run()
    assert status == 0, err
    assert re.search(r"^pid 1: \S*python\S* \S*dist/basenode run ", out, re.M), out
    assert "sleeps left: 0\n" in out
    assert "zombies: 0\n" in out


@pytest.mark.parametrize(("script", "expected"), [("exit 7", 7), ("kill -TERM $$", 128 + signal.SIGTERM)])
def test_basenode_exits_with_the_applications_status_as_tini_does(namespace, script, expected):
    status, _, err = namespace("sh", "-c", script).run()
    assert status == expected, err


def test_sigterm_stops_the_application_at_once_exits_143_and_leaves_nothing_in_the_namespace(namespace):
    ns = namespace("sleep", "100")
    pid1 = ns.pid1()
    ns_link = os.readlink(f"/proc/{pid1}/ns/pid")
    eventually(lambda: len(_in_namespace(ns_link)) == 2, what="basenode and sleep running")

    os.kill(pid1, signal.SIGTERM)
    # sleep dies of the SIGTERM itself: well before the 10 s stop timeout that would mean SIGKILL.
    status, _, err = ns.run(timeout=5)
    assert status == 128 + signal.SIGTERM, err
    assert _in_namespace(ns_link) == []


def test_sighup_to_basenode_reaches_the_application(namespace):
    ns = namespace(
        "sh", "-c", "trap 'echo got HUP; exit 0' HUP; echo ready >&2; while :; do sleep 0.05; done"
    )
    pid1 = ns.pid1()
    err = b""
    # stderr: the app writes its readiness there, on a line of its own (basenode's log of the
    # app's command line, on the same stderr, has the word too)
    while b"\nready\n" not in b"\n" + err:
        chunk = os.read(ns.proc.stderr.fileno(), 4096)
        assert chunk, err
        err += chunk

    os.kill(pid1, signal.SIGHUP)
    status, out, rest = ns.run()
    assert status == 0, err.decode() + rest
    assert out == "got HUP\n"


APP_ON_TERMINAL = (
    'trap "echo app got INT" INT; trap "echo app got TERM; sleep 0.5; echo app done; exit 0" TERM; '
    "echo app ready; while :; do sleep 0.05; done"
)
SIDE_ON_TERMINAL = (
    'trap "echo side got INT" INT; trap "echo side got TERM; exit 0" TERM; '
    "echo side ready; while :; do sleep 0.05; done"
)


def test_with_app_output_prefix_ctrl_c_in_a_terminal_stops_everything_once_cleanly(tmp_path):
    # Today's behaviour on request: the application in a session of its own, its lines prefixed,
    # and the terminal's Ctrl-C for basenode alone, which stops everything once.
    config = tmp_path / "basenode.toml"
    config.write_text(f"[programs.side]\ncommand = ['sh', '-c', '{SIDE_ON_TERMINAL}']\nstartsecs = 0\n")
    master, slave = pty.openpty()
    # setsid -c: basenode leads a new session whose controlling terminal is the pty, like a shell's job.
    proc = subprocess.Popen(
        ["setsid", "-c", *basenode_run("sh", "-c", APP_ON_TERMINAL, config=config, app_output="prefix")],
        cwd=ROOT,
        env=_env(),
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    screen = bytearray()

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every process on the terminal is gone
                return
            if not chunk:
                return
            screen.extend(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    text = lambda: screen.decode(errors="replace").replace("\r\n", "\n")  # noqa: E731
    try:
        wait_for_text(text, "app | app ready")
        wait_for_text(text, "side | side ready")
        os.write(master, b"\x03")  # Ctrl-C: SIGINT to the terminal's foreground process group
        wait_for_text(text, "app | app got TERM")
        os.write(master, b"\x03")  # again, while the application is still stopping
        status = proc.wait(timeout=30)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:  # the test failed: still stop its programs
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        os.close(master)

    screen_text = text()
    assert status == 0, screen_text  # the application's own status after its clean stop
    assert screen_text.count("app | app got TERM") == 1
    assert screen_text.count("side | side got TERM") == 1
    assert "| app got INT" not in screen_text  # only basenode saw the Ctrl-C
    assert "| side got INT" not in screen_text
    assert "app | app done" in screen_text
    assert "SIGINT: already stopping" in screen_text
    # The application stops before the program started ahead of it.
    assert screen_text.index("app | app got TERM") < screen_text.index("side | side got TERM")
