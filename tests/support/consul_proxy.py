"""A loopback HTTP proxy in front of a real Consul agent whose behaviour a test switches at run time.

Modes:
- "pass": every request goes to the agent and its answer comes back unchanged (blocking queries too);
- "500": every request gets HTTP 500 with a text body, as Consul answers when its RPC fails;
- "garbage": every request gets HTTP 200 with an X-Consul-Index and a body that is not what Consul
  sends: `set_mode("garbage", body)`, by default NOT_JSON (truncated JSON, then bytes that are not
  UTF-8); WRONG_SHAPE is valid JSON of the wrong shape (a list of things that are not entries).

Switching the mode also cuts the requests the agent is still holding (a blocking query can wait five
minutes): each gets the new mode's answer at once, as if the agent had just gone bad under it.
`requests` counts the requests received, whatever the mode; `per_path` counts them per URL path:
how many, how many carried an index (blocking queries), how many are held open now and at most, and
how many bytes of answers went back.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, Optional, Set, Tuple
from urllib.parse import urlsplit

from .ports import free_port

MODES = ("pass", "500", "garbage")
NOT_JSON = b'[{"Node": {"Node": "n1", "Address": "127.0.0.1"}, "Service": {"ID": "web-1"\xff\xfe\x00\x80'
WRONG_SHAPE = b'[1, "two", null, [3], "Node"]'
HOP_BY_HOP = frozenset(("connection", "keep-alive", "transfer-encoding", "content-length", "host"))


@dataclass
class PathCounts:
    """Requests per URL path (e.g. /v1/health/service/web), whatever their query string."""

    requests: Counter = field(default_factory=Counter)
    blocking: Counter = field(default_factory=Counter)  # those with an index: blocking queries
    in_flight: Counter = field(default_factory=Counter)  # held by the agent right now
    max_in_flight: Counter = field(default_factory=Counter)  # the most ever held at once
    bytes_sent: Counter = field(default_factory=Counter)  # answer bodies sent back to the client
    in_flight_total: int = 0  # requests held by the agent right now, all paths
    max_in_flight_total: int = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self._handle()

    do_PUT = do_DELETE = do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: one line per blocking query is noise

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        mode, generation = self.server.count_request()
        if mode == "pass":
            with self.server.held(self.path):
                answer = self._forward(body, generation)
            if answer is None:
                mode = self.server.mode  # cut by a mode switch: answer as the new mode does
                if mode == "pass":
                    self.close_connection = True
                    return
            else:
                self._send(*answer)
                return
        if mode == "500":
            self._send(500, [("Content-Type", "text/plain")], b"rpc error: injected by the test proxy")
        else:
            headers = [("Content-Type", "application/json"), ("X-Consul-Index", "7")]
            self._send(200, headers, self.server.garbage)

    def _forward(self, body: Optional[bytes], generation: int) -> Optional[Tuple[int, list, bytes]]:
        """The agent's answer, or None when a mode switch cut the request (or the agent failed)."""
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=700)
        try:
            # Connected before it is tracked: a switch can only cut a connection that has a socket, and
            # one that comes between the request's arrival and here is seen by track() as a new generation.
            upstream.connect()
            self.server.track(upstream, generation)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
            return response.status, kept, data
        except (OSError, http.client.HTTPException):
            return None
        finally:
            self.server.untrack(upstream)
            upstream.close()

    def _send(self, status: int, headers: list, body: bytes) -> None:
        try:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.server.count_bytes(self.path, len(body))
        except OSError:
            self.close_connection = True  # the client gave up; nothing to tell it


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, upstream: Tuple[str, int]) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.upstream = upstream
        self.mode = "pass"
        self.generation = 0
        self.requests = 0
        self.garbage = NOT_JSON
        self._lock = threading.Lock()
        self._open: Set[http.client.HTTPConnection] = set()
        self.per_path = PathCounts()

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client closing its connection mid-answer is normal here

    def count_request(self) -> Tuple[str, int]:
        with self._lock:
            self.requests += 1
            return self.mode, self.generation

    @contextlib.contextmanager
    def held(self, target: str) -> Iterator[None]:
        url = urlsplit(target)
        counts = self.per_path
        with self._lock:
            counts.requests[url.path] += 1
            counts.blocking[url.path] += "index=" in url.query
            counts.in_flight[url.path] += 1
            counts.max_in_flight[url.path] = max(counts.max_in_flight[url.path], counts.in_flight[url.path])
            counts.in_flight_total += 1
            counts.max_in_flight_total = max(counts.max_in_flight_total, counts.in_flight_total)
        try:
            yield
        finally:
            with self._lock:
                counts.in_flight[url.path] -= 1
                counts.in_flight_total -= 1

    def count_bytes(self, target: str, size: int) -> None:
        with self._lock:
            self.per_path.bytes_sent[urlsplit(target).path] += size

    def track(self, conn: http.client.HTTPConnection, generation: int) -> None:
        with self._lock:
            self._open.add(conn)
            stale = generation != self.generation
        if stale:  # the mode changed between receiving the request and forwarding it
            _cut(conn)

    def untrack(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._open.discard(conn)

    def switch(self, mode: str, garbage: bytes = NOT_JSON) -> None:
        with self._lock:
            self.mode, self.garbage = mode, garbage
            self.generation += 1
            held = list(self._open)
        for conn in held:
            _cut(conn)


def _cut(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)


class ConsulProxy:
    """127.0.0.1:<port> in front of the agent at `upstream` ("host:port"); starts in "pass" mode."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self.port = free_port()
        self._server = _Server(self.port, (host, int(port)))
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="consul-proxy", daemon=True
        )
        self._thread.start()

    @property
    def http_addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def mode(self) -> str:
        return self._server.mode

    @property
    def requests(self) -> int:
        return self._server.requests

    @property
    def per_path(self) -> PathCounts:
        """Requests passed on to the agent, per path (live counters)."""
        return self._server.per_path

    def set_mode(self, mode: str, garbage: bytes = NOT_JSON) -> None:
        """Switch to `mode`; in "garbage" mode every answer's body is `garbage`."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self._server.switch(mode, garbage)

    def close(self) -> None:
        self._server.switch("500")  # lets held requests go before the threads are abandoned
        self._server.shutdown()
        self._server.server_close()


def running_proxy(upstream: str) -> Iterator[ConsulProxy]:
    proxy = ConsulProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()
