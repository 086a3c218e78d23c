"""A small HTTP/1.0 GET server with bounds, for the status endpoint: whatever clients do, it holds a
fixed number of threads and a bounded amount of memory.

http.server's ThreadingHTTPServer gives every connection a thread and waits on it forever: idle
connections pile up threads, and an endless header grows one buffer without limit. Here one thread
reads every connection's request head with `selectors` (non-blocking, so a slow client costs a few
bytes of buffer, not a thread) and a fixed pool answers complete requests. Bounds:

- `max_connections` connections being read at once; one more evicts the oldest, so clients that
  connect and say nothing cannot lock others out;
- `deadline` seconds from accept to the end of the answer (a byte-a-second client is cut off);
- `max_request_line` and `max_head` bytes for the request line and the whole head, `max_headers`
  header lines (414, 431 beyond them);
- `workers` threads answer, from a queue of `queue_size` requests (503 when it is full).

Only the request line is used (method and path); headers are read and dropped, bodies refused.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import selectors
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

log = logging.getLogger(__name__)

# (method, path) -> (status code, content type, body)
Responder = Callable[[str, str], Tuple[int, str, bytes]]
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
REQUEST_LINE_RE = re.compile(rb"^([A-Z]{1,16}) (/[\x21-\x7e]*) HTTP/1\.[01]$")
RECV_SIZE = 4096


@dataclass(frozen=True)
class Limits:
    max_connections: int = 64
    deadline: float = 10.0
    max_request_line: int = 4096
    max_head: int = 16 * 1024
    max_headers: int = 64
    workers: int = 4
    queue_size: int = 16


def response(code: int, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.0 {code} {REASONS.get(code, 'Error')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _plain(code: int, text: str) -> bytes:
    return response(code, "text/plain; charset=utf-8", text.encode() + b"\n")


class _Conn:
    __slots__ = ("data", "deadline", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.data = b""
        self.deadline = deadline


def parse_head(data: bytes, limits: Limits) -> Tuple[Optional[Tuple[str, str]], Optional[bytes]]:
    """((method, path), None) once `data` holds a whole valid head; (None, error response) when it
    never will; (None, None) while more is needed."""
    line_end = data.find(b"\n")
    if line_end > limits.max_request_line or (line_end < 0 and len(data) > limits.max_request_line):
        return None, _plain(414, "request line too long")
    if line_end < 0:
        return None, None
    end = data.find(b"\r\n\r\n")
    end = end + 4 if end >= 0 else -1
    bare = data.find(b"\n\n")
    if bare >= 0 and (end < 0 or bare + 2 < end):
        end = bare + 2
    if end < 0:
        if len(data) > limits.max_head or data.count(b"\n") > limits.max_headers + 1:
            return None, _plain(431, "request head too large")
        return None, None
    head = data[:end]
    if len(head) > limits.max_head or head.count(b"\n") > limits.max_headers + 2:
        return None, _plain(431, "request head too large")
    m = REQUEST_LINE_RE.match(data[:line_end].rstrip(b"\r"))
    if m is None:
        return None, _plain(400, "bad request line")
    return (m.group(1).decode("ascii"), m.group(2).decode("ascii")), None


class BoundedHTTPServer:
    """Listens on `address`; `start()` runs the reader thread and the workers (daemon threads)."""

    def __init__(
        self, address: Tuple[str, int], respond: Responder, limits: Limits = Limits(), name: str = "http"
    ) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(address)
            self.sock.listen(128)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.server_address = self.sock.getsockname()[:2]
        self.respond = respond
        self.limits = limits
        self.name = name
        self._reading: Dict[int, _Conn] = {}  # insertion order is accept order: the oldest first
        self._queue: queue.Queue = queue.Queue(maxsize=limits.queue_size)
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()

    def start(self) -> None:
        threading.Thread(target=self._read_loop, name=f"{self.name}-reader", daemon=True).start()
        for i in range(self.limits.workers):
            threading.Thread(target=self._work, name=f"{self.name}-{i}", daemon=True).start()

    def server_close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        for _ in range(self.limits.workers):
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)

    # --- the reader: accepts, reads heads, enforces the deadline and the connection cap

    def _read_loop(self) -> None:
        sel = self._selector
        sel.register(self.sock, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                self._expire(now)
                timeout = None
                if self._reading:
                    timeout = max(0.0, next(iter(self._reading.values())).deadline - now)
                for key, _ in sel.select(timeout):
                    if key.fileobj is self.sock:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(64)
                    else:
                        self._read(key.data)
        except Exception:
            log.exception("%s: the reader thread failed", self.name)
        finally:
            for conn in list(self._reading.values()):
                self._drop(conn)
            sel.close()
            self.sock.close()
            self._wake_r.close()
            self._wake_w.close()

    def _accept(self) -> None:
        for _ in range(64):  # then let the others be read: a flood of connects is not a loop of its own
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE: the oldest go, and the kernel keeps the rest queued
                log.warning("%s: cannot accept: %s", self.name, e)
                self._evict_oldest()
                return
            if len(self._reading) >= self.limits.max_connections:
                self._evict_oldest()
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic() + self.limits.deadline)
            self._reading[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _evict_oldest(self) -> None:
        if self._reading:
            self._drop(next(iter(self._reading.values())))

    def _expire(self, now: float) -> None:
        while self._reading:
            oldest = next(iter(self._reading.values()))
            if oldest.deadline > now:
                return
            self._answer_now(oldest, _plain(408, "request not received in time"))

    def _read(self, conn: _Conn) -> None:
        try:
            chunk = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not chunk:
            self._drop(conn)  # closed (or half-closed) before a whole head: nothing to answer
            return
        conn.data += chunk
        request, error = parse_head(conn.data, self.limits)
        if error is not None:
            self._answer_now(conn, error)
        elif request is not None:
            self._unwatch(conn)
            try:
                self._queue.put_nowait((conn, request))
            except queue.Full:
                self._send_and_close(conn, _plain(503, "busy; try again"))

    def _unwatch(self, conn: _Conn) -> None:
        self._reading.pop(conn.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)

    def _drop(self, conn: _Conn) -> None:
        self._unwatch(conn)
        conn.sock.close()

    def _answer_now(self, conn: _Conn, data: bytes) -> None:
        self._unwatch(conn)
        self._send_and_close(conn, data)

    @staticmethod
    def _send_and_close(conn: _Conn, data: bytes) -> None:
        """A short error answer, without waiting: what the socket buffer takes (all, for these)."""
        with contextlib.suppress(OSError):
            conn.sock.send(data)
        conn.sock.close()

    # --- the workers: answer complete requests

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._stop.is_set():
                if item is not None:
                    item[0].sock.close()
                return
            conn, (method, path) = item
            try:
                self._answer(conn, method, path)
            except Exception:
                log.exception("%s: cannot answer %s %s", self.name, method, path[:100])
            finally:
                conn.sock.close()

    def _answer(self, conn: _Conn, method: str, path: str) -> None:
        if method != "GET":
            data = _plain(405, "only GET")
        else:
            try:
                data = response(*self.respond(method, path))
            except Exception:
                log.exception("%s: cannot answer %s", self.name, path[:100])
                data = _plain(500, "internal error; see basenode's log")
        _send_before(conn.sock, data, max(conn.deadline, time.monotonic() + 1.0))


def _send_before(sock: socket.socket, data: bytes, deadline: float) -> None:
    """Send `data` unless `deadline` passes first: a client that reads its answer a byte at a time
    holds a worker until then, no longer."""
    view = memoryview(data)
    with contextlib.suppress(OSError):
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            sock.settimeout(left)
            view = view[sock.send(view) :]
