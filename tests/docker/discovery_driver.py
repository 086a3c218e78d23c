"""The discovery acceptance, run INSIDE a basenode container (standard library only).

tests/docker/test_trixie.py copies this file into a container of the image under test and runs it
with the image's own python3, so the checks meet that image's HAProxy and Python, not the host's.
The container is a single Consul server with `BASENODE_ROUTES=web:<port>/http`; this script plays
the application's neighbours: real HTTP backends on loopback, registrations through the local
agent's HTTP API, and a client that keeps sending requests through HAProxy meanwhile.

It prints one JSON document: what the test asserts on. Nothing here decides pass or fail.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional

AGENT = "http://127.0.0.1:8500"
MASTER_SOCKET = "/run/basenode/haproxy-master.sock"


class _Named(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client (HAProxy's health check, the load) hanging up mid-request is not news


def backend(name: str) -> int:
    server = _Quiet(("127.0.0.1", 0), _Named)
    server.daemon_threads = True
    server.name = name  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def agent(method: str, path: str, body: Any = None) -> bytes:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(AGENT + path, data=data, method=method)
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.read()


def register(service: str, service_id: str, port: int) -> None:
    check = {"CheckID": f"service:{service_id}", "TTL": "1h", "Status": "passing"}
    agent(
        "PUT",
        "/v1/agent/service/register",
        {"ID": service_id, "Name": service, "Address": "127.0.0.1", "Port": port, "Check": check},
    )


def get(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def seen(port: int, count: int = 24) -> set:
    names = set()
    for _ in range(count):
        try:
            names.add(get(port))
        except OSError:
            names.add("<error>")
    return names


def eventually(probe: Callable[[], bool], what: str, timeout: float = 60.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if probe():
            return time.monotonic() - start
        time.sleep(0.1)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def show_proc() -> Dict[str, Any]:
    """The master CLI's reload count and current workers (the truth about reloads)."""
    for _ in range(100):
        try:
            return _show_proc()
        except ConnectionRefusedError:
            time.sleep(0.1)  # the master is re-executing itself (a reload): its socket is back soon
    return _show_proc()


def _show_proc() -> Dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(MASTER_SOCKET)
        s.sendall(b"show proc\n")
        s.shutdown(socket.SHUT_WR)  # the master CLI answers and closes once our input ends
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    reloads: Optional[int] = None
    workers: List[int] = []
    section = "master"
    for line in b"".join(chunks).decode().splitlines():
        text = line.strip()
        if text.startswith("#"):
            section = text.lstrip("#").strip()
            continue
        parts = text.split()
        if len(parts) >= 3 and parts[0].isdigit():
            if parts[1] == "master":
                reloads = int(parts[2])
            elif parts[1] == "worker" and section == "workers":
                workers.append(int(parts[0]))
    return {"reloads": reloads, "workers": workers}


class Load:
    """Back-to-back requests through HAProxy, each on a new connection; every failure is kept."""

    def __init__(self, port: int) -> None:
        self.port, self.ok, self.failures = port, 0, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                get(self.port)
                self.ok += 1
            except OSError as e:
                self.failures.append(repr(e))


def main(web_port: int, kv_port: int, changes: int) -> Dict[str, Any]:
    pool = {name: backend(name) for name in ("a", "b", "c", "d")}
    for name, port in pool.items():
        register("web", f"web-{name}", port)
    eventually(lambda: seen(web_port) == set(pool), "all four backends through HAProxy")
    before = show_proc()

    # Registrations, deregistrations and failing checks: the runtime API's job, no reload.
    names = ("a", "b", "c")  # d always stays, so some instance is always there
    with Load(web_port) as load:
        for i in range(changes):
            name = names[i % 3]
            step = (i // 3) % 3
            if step == 0:
                agent("PUT", f"/v1/agent/service/deregister/web-{name}")
            elif step == 1:
                register("web", f"web-{name}", pool[name])
            else:
                agent("PUT", f"/v1/agent/check/{'fail' if i % 2 else 'pass'}/service:web-{name}")
            time.sleep(0.02)
        for name in names:  # every instance back and passing: the end state is known
            register("web", f"web-{name}", pool[name])  # a re-registration keeps a check's status
            agent("PUT", f"/v1/agent/check/pass/service:web-{name}")
        followed = eventually(lambda: seen(web_port) == set(pool), "the end state through HAProxy")
        time.sleep(1.0)
    after_changes = show_proc()

    # A new route through KV: a new frontend, so one seamless reload.
    cache = backend("cache")
    register("cache", "cache-1", cache)
    agent("PUT", "/v1/kv/basenode/routes/cache", f"{kv_port}/http".encode())
    eventually(lambda: seen(kv_port, 4) == {"cache"}, "the KV route's frontend")
    after_kv = show_proc()
    return {
        "python": sys.version.split()[0],
        "changes": changes,
        "ok": load.ok,
        "failures": load.failures[:20],
        "failure_count": len(load.failures),
        "end_state_seconds": round(followed, 3),
        "before": before,
        "after_changes": after_changes,
        "after_kv": after_kv,
        "web_after_kv": sorted(seen(web_port)),
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))), flush=True)
    # The backends' daemon threads may still be inside a socket call: leave without tearing them down
    # (Python 3.13 aborts on some of those at interpreter shutdown).
    os._exit(0)
