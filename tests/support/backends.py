"""Real HTTP backends on loopback that answer every request with their own name.

Each backend is a ThreadingHTTPServer in a daemon thread: HTTP/1.1 with keep-alive (so HAProxy
keeps idle server connections, as it would in production), and a body that says who answered,
so a test can tell exactly which instances a request reached. `GET /hold` answers only once the
backend's `release` event is set, counted in `holding` meanwhile (a request that stays in flight).
"""

from __future__ import annotations

import http.client
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Iterator, List, Optional

from .ports import free_port
from .waiting import eventually


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        server: _Server = self.server  # type: ignore[assignment]
        if self.path == "/hold":
            with server.lock:
                server.holding += 1
            server.release.wait(60)
            with server.lock:
                server.holding -= 1
        body = server.name.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: thousands of requests per test


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    name = ""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.lock = threading.Lock()
        self.holding = 0
        self.release = threading.Event()

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # HAProxy resetting an idle keep-alive connection is normal, not worth a traceback


class Backend:
    """One named HTTP server on 127.0.0.1:<port>; `close()` stops it."""

    def __init__(self, name: str, port: Optional[int] = None, tls: Optional[ssl.SSLContext] = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.server = _Server(("127.0.0.1", self.port), _Handler)
        self.server.name = name
        if tls is not None:  # HTTPS: the handshake happens as each connection is accepted
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.05,), name=f"backend-{name}", daemon=True
        )
        self.thread.start()

    @property
    def holding(self) -> int:
        return self.server.holding

    def close(self) -> None:
        self.server.release.set()
        self.server.shutdown()
        self.server.server_close()


class Backends:
    """A set of named backends, closed together."""

    def __init__(self) -> None:
        self.by_name: Dict[str, Backend] = {}

    def start(self, name: str, tls: Optional[ssl.SSLContext] = None) -> Backend:
        backend = Backend(name, tls=tls)
        self.by_name[name] = backend
        return backend

    def __getitem__(self, name: str) -> Backend:
        return self.by_name[name]

    def __iter__(self) -> Iterator[Backend]:
        return iter(self.by_name.values())

    def close(self) -> None:
        for backend in self.by_name.values():
            backend.close()


def get(port: int, path: str = "/", timeout: float = 5.0) -> str:
    """One request on a fresh connection; the body (the answering backend's name). Raises on failure."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read().decode()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
        return body
    finally:
        conn.close()


def names_seen(port: int, requests: int = 20) -> List[str]:
    """Sorted distinct backend names answering `requests` consecutive requests."""
    return sorted({get(port) for _ in range(requests)})


class Load:
    """HTTP requests through HAProxy in a loop from two threads until closed: one client keeps its
    connection alive (as a connection pool would), the other opens a new connection per request.

    retry_idle_close: a GET whose reused keep-alive connection the server closed before answering
    is sent again once on a new connection, as HTTP clients do (RFC 9112 9.3.1: idempotent requests
    may be retried). A proxy that reloads by replacing its workers (nginx) closes idle keep-alive
    connections on every reload; such a retry is counted in `retried`, never in `failures`, and a
    failure on the new connection is a failure."""

    def __init__(self, port: int, retry_idle_close: bool = False) -> None:
        self.port = port
        self.retry_idle_close = retry_idle_close
        self.ok = 0
        self.retried = 0
        self.failures: List[str] = []
        self.seen: set = set()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(keep_alive,), daemon=True)
            for keep_alive in (True, False)
        ]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)

    def wait_for_more(self, count: int) -> None:
        target = self.ok + count
        eventually(lambda: self.ok >= target or self.failures, what=f"{count} more requests under load")

    def _run(self, keep_alive: bool) -> None:
        conn: Optional[http.client.HTTPConnection] = None
        while not self.stop.is_set():
            # One http.client closed itself (the answer said "Connection: close") reopens: not reused.
            reused, answered = conn is not None and conn.sock is not None, False
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/")
                response = conn.getresponse()
                answered = True
                body = response.read().decode()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {body[:100]!r}")
                with self.lock:
                    self.ok += 1
                    self.seen.add(body)
            except Exception as e:  # every failure counts, whatever its kind
                idle_close = isinstance(
                    e, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)
                )
                with self.lock:
                    if self.retry_idle_close and reused and not answered and idle_close:
                        self.retried += 1
                    else:
                        self.failures.append(f"{type(e).__name__}: {e}")
                conn = None
                continue
            if not keep_alive:
                conn.close()
                conn = None
