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

The server side runs inside the supervisor's loop (PID 1 stays single-threaded) and never waits
on a client: connections are non-blocking and read as their bytes arrive, each has SERVER_TIMEOUT
from accept to its whole line (then it is closed), at most MAX_CLIENTS are open (one more closes
the oldest), and a line is at most MAX_REQUEST bytes of JSON nested MAX_DEPTH deep. A client that
trickles bytes costs PID 1 a few microseconds per byte: reaping and signal forwarding go on.
"""

from __future__ import annotations

import contextlib
import functools
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
SERVER_TIMEOUT = 2.0  # from accept to the whole request line
CLIENT_TIMEOUT = 5.0
MAX_REQUEST = 4096
MAX_DEPTH = 8  # the requests are flat objects; json's recursion limit is far away
MAX_CLIENTS = 16


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
        self.clients: Dict[int, _Client] = {}  # fd -> client; insertion order is accept order
        supervisor.watch_fd(self.sock.fileno(), self._accept)
        supervisor.add_ticker(self._expire)

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._close(client)
        self.sock.close()
        with contextlib.suppress(OSError):
            if self.path.stat().st_ino == self.inode:  # not a newer basenode's socket
                self.path.unlink()

    # --- connections: non-blocking, in the supervisor's loop (see the module docstring)

    def _accept(self) -> None:
        for _ in range(MAX_CLIENTS):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and the like: the oldest goes, the rest wait in the backlog
                log.warning("control socket: cannot accept: %s", e)
                self._close_oldest()
                return
            if len(self.clients) >= MAX_CLIENTS:
                self._close_oldest()
            conn.setblocking(False)
            client = _Client(conn, time.monotonic() + SERVER_TIMEOUT)
            self.clients[conn.fileno()] = client
            self.supervisor.watch_fd(conn.fileno(), functools.partial(self._read, client))

    def _close_oldest(self) -> None:
        if self.clients:
            self._close(next(iter(self.clients.values())))

    def _close(self, client: _Client) -> None:
        if client.closed:
            return
        client.closed = True
        fd = client.conn.fileno()
        self.clients.pop(fd, None)
        self.supervisor.unwatch_fd(fd)
        client.conn.close()

    def _expire(self, now: float) -> Optional[float]:
        """Close clients past their deadline; when the next one's comes (the loop's ticker)."""
        while self.clients:
            oldest = next(iter(self.clients.values()))
            if oldest.deadline > now:
                return oldest.deadline
            self._reply(oldest, {"ok": False, "error": f"bad request: no whole line in {SERVER_TIMEOUT:g} s"})
        return None

    def _read(self, client: _Client) -> None:
        if client.closed:
            return  # closed earlier in the same turn of the loop
        try:
            chunk = client.conn.recv(MAX_REQUEST + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(client)
            return
        client.data += chunk
        if b"\n" not in client.data and chunk and len(client.data) <= MAX_REQUEST:
            return  # more to come
        try:
            reply = self.answer(parse_request(client.data))
        except ValueError as e:
            reply = {"ok": False, "error": f"bad request: {e}"}
        self._reply(client, reply)

    def _reply(self, client: _Client, reply: Dict[str, Any]) -> None:
        """Send without waiting (a reply fits the socket's buffer many times over), then close."""
        with contextlib.suppress(OSError):
            client.conn.send(json.dumps(reply).encode() + b"\n")
        self._close(client)

    # ---

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


class _Client:
    __slots__ = ("closed", "conn", "data", "deadline")

    def __init__(self, conn: socket.socket, deadline: float) -> None:
        self.conn = conn
        self.data = b""
        self.deadline = deadline
        self.closed = False


def nesting(data: bytes) -> int:
    """How deep JSON text nests arrays and objects (strings skipped), without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def parse_request(data: bytes) -> Any:
    """The first line of `data` as JSON; ValueError when too long, too deep or not JSON."""
    line = data.split(b"\n", 1)[0]
    if len(line) > MAX_REQUEST:
        raise ValueError(f"request longer than {MAX_REQUEST} bytes")
    if nesting(line) > MAX_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_DEPTH}")
    return json.loads(line or b"null")


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
