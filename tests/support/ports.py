"""Free loopback ports for the real components the tests start."""

from __future__ import annotations

import socket
import time
from collections import deque


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (UDP free too, for Consul's serf/DNS).

    Never one handed out a moment ago: the kernel may give the same free port to two calls in a row,
    and a Consul agent refuses to start with its HTTP and DNS ports equal."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        if port in _RECENT:
            continue
        _RECENT.append(port)
        return port
    raise RuntimeError("no free loopback port")


_RECENT: deque = deque(maxlen=64)


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    """Until something accepts on host:port; AssertionError after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nothing listens on {host}:{port} after {timeout}s")
