"""ready.py: each readiness probe holds exactly when its condition does, and never blocks its caller.

Real loopback sockets, a real HTTP server thread and real commands: these are the conditions.
"""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional

import pytest

from basenode import config, ready
from tests.support.ports import free_port
from tests.support.waiting import eventually


def program(**fields) -> config.Program:
    return config.Program(name="db", command=("sleep", "1"), **fields)


def poll_until(probe: ready.Probe, timeout: float = 10.0, reap: Optional[Callable[[], None]] = None) -> bool:
    """Poll as the loop does (at `due`); True once it holds, False when it did not within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.monotonic()
        if probe.poll(now):
            return True
        if reap is not None:
            reap()
        time.sleep(max(0.0, min(probe.due(now) - now, 0.05)))
    return False


def test_a_program_without_a_condition_has_no_probe():
    assert ready.probe_for(program(), track=lambda pid, cb: None) is None
    assert ready.describe(program()) is None


def test_ready_file_holds_once_the_file_exists(tmp_path: Path):
    flag = tmp_path / "up"
    probe = ready.probe_for(program(ready_file=str(flag)), track=lambda pid, cb: None)
    assert not poll_until(probe, timeout=0.2)
    flag.touch()
    assert poll_until(probe)
    assert ready.describe(program(ready_file=str(flag))) == f"ready_file {flag}"


def test_ready_tcp_holds_once_the_port_accepts_and_not_before():
    port = free_port()
    probe = ready.probe_for(program(ready_tcp=("127.0.0.1", port)), track=lambda pid, cb: None)
    assert not poll_until(probe, timeout=0.3)
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(4)
        assert poll_until(probe)
    probe.close()


class _Answers(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = {"/ok": 200, "/moved": 302, "/starting": 503}.get(self.path.split("?")[0], 404)
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_ready_http_holds_on_2xx_and_3xx_answers_only(http_server: int):
    def probe(path: str) -> ready.Probe:
        return ready.probe_for(program(ready_http=f"http://127.0.0.1:{http_server}{path}"), lambda p, c: None)

    assert poll_until(probe("/ok"))
    assert poll_until(probe("/moved?x=1"))
    assert not poll_until(probe("/starting"), timeout=0.6)
    assert not poll_until(probe("/missing"), timeout=0.6)


def test_a_server_that_accepts_and_never_answers_is_given_up_without_blocking_a_poll():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        probe = ready.probe_for(program(ready_http=f"http://127.0.0.1:{port}/"), lambda p, c: None)
        assert probe.poll(time.monotonic()) is False
        first = probe.sock
        # Its connection never waits: a poll only looks at what the socket has now.
        assert first is not None and first.getblocking() is False

        def given_up() -> bool:
            assert probe.poll(time.monotonic()) is False  # no answer ever comes: never ready
            return probe.sock is not first

        eventually(given_up, timeout=ready.ATTEMPT_TIMEOUT + 5, what="the silent attempt given up")
        probe.close()


class Reaper:
    """Stands in for the supervisor's loop: reaps the probes' children and hands over their status."""

    def __init__(self) -> None:
        self.children: Dict[int, Callable[[int], None]] = {}

    def track(self, pid: int, on_exit: Callable[[int], None]) -> None:
        self.children[pid] = on_exit

    def reap(self) -> None:
        for pid in list(self.children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                self.children.pop(pid)(status)


def test_ready_command_holds_once_the_command_exits_0(tmp_path: Path):
    reaper = Reaper()
    flag = tmp_path / "up"
    probe = ready.probe_for(program(ready_command=("test", "-e", str(flag))), reaper.track)
    assert not poll_until(probe, timeout=1.2, reap=reaper.reap)  # it ran, exited 1, and will run again
    flag.touch()
    assert poll_until(probe, reap=reaper.reap)
    assert reaper.children == {}
    assert ready.describe(program(ready_command=("test", "-e", "x"))) == "ready_command test -e x"


def test_a_probe_closed_while_its_command_runs_kills_it():
    reaper = Reaper()
    probe = ready.probe_for(program(ready_command=("sleep", "100")), reaper.track)
    assert probe.poll(time.monotonic()) is False
    (pid,) = reaper.children
    probe.close()
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
