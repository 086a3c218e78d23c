"""Readiness: when a started program counts as up, for depends_on, registration and sync.ready.

A program is up once it has run `startsecs`; with a readiness condition it also has to be ready:

- `ready_file`: the file exists (the sync loop writes `sync.ready` after its first renders);
- `ready_tcp`: a TCP connection to the port (on 127.0.0.1, or the address given) is accepted;
- `ready_http`: a GET of the URL answers with a status from 200 to 399;
- `ready_command`: the command exits 0.

The check runs from the moment the program is up until it first holds, then never again:
readiness orders starts, it is not a liveness probe (Consul's checks are). Each probe is polled by
the supervisor's loop and never blocks it: sockets are non-blocking and each attempt is given up
after ATTEMPT_TIMEOUT, a command runs as a child that the loop reaps (`track`), killed when it
takes longer than COMMAND_TIMEOUT. PID 1 has to keep reaping and forwarding signals meanwhile.

Only the standard library; no name resolution (config accepts IP addresses and `localhost` only).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import subprocess
import time
from typing import Callable, Dict, Optional

from . import childenv, config

# How often a condition that does not hold yet is tried again, by kind.
INTERVALS = {"file": 0.05, "tcp": 0.1, "http": 0.25, "command": 0.5}
IN_PROGRESS_POLL = 0.02  # a connection or an answer on its way
ATTEMPT_TIMEOUT = 1.0  # one connection (and, for HTTP, its answer)
COMMAND_TIMEOUT = 10.0  # one run of ready_command
MAX_ANSWER = 4096  # of an HTTP answer, only the status line is read

Track = Callable[[int, Callable[[int], None]], None]  # (pid, on_exit(waitpid status)): the loop reaps it


def describe(program: config.Program) -> Optional[str]:
    """The program's readiness condition for a log line, or None when it has none."""
    if program.ready_tcp is not None:
        return f"ready_tcp {program.ready_tcp[0]}:{program.ready_tcp[1]}"
    if program.ready_http is not None:
        return f"ready_http {program.ready_http}"
    if program.ready_command:
        return "ready_command " + " ".join(program.ready_command)[:100]
    if program.ready_file is not None:
        return f"ready_file {program.ready_file}"
    return None


class Probe:
    """One run's readiness condition; `poll(now)` is True once it held."""

    kind = "file"

    def __init__(self) -> None:
        self.next_at = 0.0

    def due(self, now: float) -> float:
        """When the loop should poll again."""
        return max(now, self.next_at)

    def poll(self, now: float) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        """The program exited or basenode stops: nothing of the probe may be left."""

    def _later(self, now: float) -> None:
        self.next_at = now + INTERVALS[self.kind]


class FileProbe(Probe):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def poll(self, now: float) -> bool:
        if now < self.next_at:
            return False
        if os.path.exists(self.path):
            return True
        self._later(now)
        return False


class SocketProbe(Probe):
    """A TCP connection accepted (request None), or, for HTTP, a good status line to `request`."""

    def __init__(self, host: str, port: int, request: Optional[bytes] = None) -> None:
        super().__init__()
        self.kind = "tcp" if request is None else "http"
        self.address = (host, port)
        self.request = request
        self.sock: Optional[socket.socket] = None
        self.started = 0.0
        self.sent = False
        self.answer = b""

    def poll(self, now: float) -> bool:
        if self.sock is None:
            if now < self.next_at:
                return False
            self._connect(now)
            if self.sock is None:
                return False
        elif now - self.started > ATTEMPT_TIMEOUT:
            self._failed(now)
            return False
        try:
            return self._advance(now)
        except OSError:
            self._failed(now)
            return False

    def due(self, now: float) -> float:
        return now + IN_PROGRESS_POLL if self.sock is not None else max(now, self.next_at)

    def _connect(self, now: float) -> None:
        family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self._later(now)
            return
        self.sock, self.started, self.sent, self.answer = sock, now, False, b""

    def _advance(self, now: float) -> bool:
        assert self.sock is not None
        if not self.sent:
            _, writable, _ = select.select([], [self.sock], [], 0)
            if not writable:
                return False  # still connecting
            error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error))
            if self.request is None:
                self.close()
                return True
            self.sock.send(self.request)  # a few dozen bytes into an empty socket buffer
            self.sent = True
        readable, _, _ = select.select([self.sock], [], [], 0)
        if not readable:
            return False
        chunk = self.sock.recv(MAX_ANSWER)
        self.answer += chunk
        if b"\n" not in self.answer and chunk and len(self.answer) < MAX_ANSWER:
            return False
        parts = self.answer.split(b"\n", 1)[0].split()
        ok = len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit()
        if ok and 200 <= int(parts[1]) < 400:
            self.close()
            return True
        self._failed(now)
        return False

    def _failed(self, now: float) -> None:
        self.close()
        self._later(now)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class CommandProbe(Probe):
    """`ready_command` exits 0. Its process is a child of PID 1, reaped by the loop through `track`."""

    kind = "command"

    def __init__(
        self,
        program: config.Program,
        track: Track,
        preexec: Optional[Callable[[], None]] = None,
    ) -> None:
        super().__init__()
        self.program = program
        self.track = track
        self.preexec = preexec
        self.pid: Optional[int] = None
        self.started = 0.0
        self.held = False
        self.killed = False

    def poll(self, now: float) -> bool:
        if self.held:
            return True
        if self.pid is not None:
            if now - self.started > COMMAND_TIMEOUT and not self.killed:
                self.killed = True
                _kill_group(self.pid)
            return False
        if now < self.next_at:
            return False
        # The program's own environment: without basenode's secrets unless it lists them (childenv).
        env: Dict[str, str] = {
            **childenv.inherited(os.environ, self.program.pass_env),
            **dict(self.program.environment),
        }
        try:
            popen = subprocess.Popen(
                self.program.ready_command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                cwd=self.program.directory,
                start_new_session=True,
                preexec_fn=self.preexec,
                restore_signals=True,
                close_fds=True,
            )
        except (OSError, subprocess.SubprocessError):
            self._later(now)
            return False
        popen.returncode = 0  # the loop reaps it (track): Popen must never waitpid() it
        self.pid, self.started, self.killed = popen.pid, now, False
        self.track(popen.pid, self._exited)
        return False

    def due(self, now: float) -> float:
        if self.pid is not None:
            return max(now, self.started + COMMAND_TIMEOUT) if not self.killed else now + IN_PROGRESS_POLL
        return max(now, self.next_at)

    def _exited(self, status: int) -> None:
        self.pid = None
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            self.held = True
        else:
            self._later(time.monotonic())

    def close(self) -> None:
        if self.pid is not None:
            _kill_group(self.pid)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def probe_for(
    program: config.Program, track: Track, preexec: Optional[Callable[[], None]] = None
) -> Optional[Probe]:
    """The probe of `program`'s readiness condition; None when it has none (ready once up)."""
    if program.ready_tcp is not None:
        return SocketProbe(*program.ready_tcp)
    if program.ready_http is not None:
        host, port, target = config.http_target(program.ready_http)
        hostname = f"[{host}]" if ":" in host else host
        request = f"GET {target} HTTP/1.0\r\nHost: {hostname}:{port}\r\nUser-Agent: basenode-ready\r\n\r\n"
        return SocketProbe(host, port, request.encode())
    if program.ready_command:
        return CommandProbe(program, track, preexec)
    if program.ready_file is not None:
        return FileProbe(program.ready_file)
    return None
