"""PID 1's control socket: <state_dir>/control.sock, for basenode's own children and the operator.

One JSON object per connection, one line each way:

    {"op": "programs"}                                   -> {"ok": true, "programs": [{...}, ...]}
    {"op": "signal", "program": "nginx", "signal": "HUP"} -> {"ok": true, "sent": true}
        with "if_running": true, a program not running or just started is no error (the signal held
        until it has run a moment): {"ok": true, "sent": false}
    {"op": "restart", "program": "nginx"}                 -> {"ok": true}
    anything wrong                                        -> {"ok": false, "error": "why"}

The sync child reads program states through it (for /status, /health and /metrics) and signals or
restarts a program after writing a template's file. The socket is 0600 and in the 0700 state dir:
only basenode's own user can connect, as it can anyway signal basenode's children.

The server side runs inside the supervisor's loop (PID 1 stays single-threaded): a connection gets
SERVER_TIMEOUT to send its line, which only a local process of the same user can hold up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Dict, Optional

from .supervise import ProgramState, Supervisor

log = logging.getLogger(__name__)
SOCKET_NAME = "control.sock"
SERVER_TIMEOUT = 0.5
CLIENT_TIMEOUT = 5.0
MAX_REQUEST = 4096


class ControlError(Exception):
    """The control socket cannot be reached, or answered with an error."""


def socket_path(state_dir: Path) -> Path:
    return Path(state_dir) / SOCKET_NAME


def program_view(state: ProgramState, now: float) -> Dict[str, Any]:
    """One program as `status` shows it."""
    return {
        "name": state.name,
        "state": state.state,
        "pid": state.pid,
        "uptime": round(now - state.started, 3) if state.started is not None else None,
        "restarts": state.restarts,
        "last_exit": state.last_exit,
        "ready": state.ready,
        "required": state.required,
    }


class ControlServer:
    """Listens on the control socket and answers inside the supervisor's loop."""

    def __init__(self, supervisor: Supervisor, state_dir: Path) -> None:
        self.supervisor = supervisor
        self.path = socket_path(state_dir)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by an earlier run: nobody listens on it any more
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # created 0600, never briefly wider
        try:
            self.sock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        self.inode = self.path.stat().st_ino
        self.sock.listen(16)
        self.sock.setblocking(False)
        supervisor.watch_fd(self.sock.fileno(), self._accept)

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            if self.path.stat().st_ino == self.inode:  # not a newer basenode's socket
                self.path.unlink()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            with conn:
                conn.settimeout(SERVER_TIMEOUT)
                try:
                    reply = self.answer(_read_line(conn))
                except (OSError, ValueError) as e:
                    reply = {"ok": False, "error": f"bad request: {e}"}
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps(reply).encode() + b"\n")

    def answer(self, request: Any) -> Dict[str, Any]:
        if not isinstance(request, dict):
            return {"ok": False, "error": "expected a JSON object"}
        op = request.get("op")
        try:
            if op == "programs":
                now = time.time()
                return {"ok": True, "programs": [program_view(s, now) for s in self.supervisor.states()]}
            if op == "signal":
                sent = self.supervisor.signal_program(
                    str(request.get("program")),
                    _signal(request.get("signal")),
                    if_running=request.get("if_running") is True,
                )
                return {"ok": True, "sent": sent}
            if op == "restart":
                self.supervisor.restart_program(str(request.get("program")))
                return {"ok": True}
        except ValueError as e:
            return {"ok": False, "error": str(e)}
        return {"ok": False, "error": f"unknown op {op!r}"}


def _signal(name: Any) -> int:
    text = str(name or "").upper()
    text = text if text.startswith("SIG") else "SIG" + text
    sig = getattr(signal.Signals, text, None) if text.isidentifier() else None
    if sig is None:
        raise ValueError(f"unknown signal {name!r}")
    return int(sig)


def _read_line(conn: socket.socket) -> Any:
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(MAX_REQUEST)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError("request too long")
    return json.loads(data.split(b"\n", 1)[0] or b"null")


def request(state_dir: Path, message: Dict[str, Any], timeout: float = CLIENT_TIMEOUT) -> Dict[str, Any]:
    """Send one request to a running basenode's PID 1; its answer, or ControlError."""
    path = socket_path(state_dir)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps(message).encode() + b"\n")
            reply = _read_line(sock)
    except (OSError, ValueError) as e:
        raise ControlError(f"control socket {path}: {e}") from None
    if not isinstance(reply, dict):
        raise ControlError(f"control socket {path}: unexpected answer {reply!r}")
    return reply


def checked(state_dir: Path, message: Dict[str, Any], timeout: float = CLIENT_TIMEOUT) -> Dict[str, Any]:
    """request(), raising ControlError when the answer says it failed."""
    reply = request(state_dir, message, timeout)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error") or "failed"))
    return reply


def programs(state_dir: Path, timeout: float = 2.0) -> Optional[list]:
    """The program views of a live basenode, or None when no PID 1 answers."""
    try:
        return checked(state_dir, {"op": "programs"}, timeout).get("programs")
    except ControlError:
        return None
