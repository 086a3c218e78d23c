"""Observers of one service, each in a process of its own: they print a line whenever what they see changes.

    python3 bench/observe.py floor 127.0.0.1:8500 web
        a bare blocking query on /v1/health/service/web?passing, again at once after every answer:
        the floor, the soonest any client of the agent can know of a change.
    python3 bench/observe.py haproxy /path/to/haproxy.sock web
        `show servers state web` on HAProxy's runtime API, polled every POLL seconds: when HAProxy
        itself routes to a server, whatever the probes through it happen to hit.

Each line is `<CLOCK_MONOTONIC seconds> <comma-separated ports>`, written once the answer that showed
the new set has been read (ports of passing instances; of servers HAProxy sends traffic to: running,
no maintenance or drain). A process of its own per observer, so that neither waits for the other's
turn at a Python interpreter lock, and CLOCK_MONOTONIC is the same clock in every process.
Standard library only: it measures basenode, it must not share its code.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time
from typing import FrozenSet, Optional, Tuple

POLL = 0.001
# HAProxy's srv_admin_state bits: forced/inherited/config/resolution/health maintenance and drain.
NOT_READY = 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20 | 0x40
RUNNING = 2  # srv_op_state


def emit(ports: FrozenSet[int]) -> None:
    sys.stdout.write(f"{time.monotonic():.6f} {','.join(map(str, sorted(ports)))}\n")
    sys.stdout.flush()


def blocking_reads(addr: str, service: str) -> None:
    host, _, port = addr.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=400)
    index = "0"
    seen: Optional[FrozenSet[int]] = None
    while True:
        try:
            conn.request("GET", f"/v1/health/service/{service}?passing=1&index={index}&wait=5m")
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            time.sleep(0.05)
            continue
        if resp.status != 200:
            time.sleep(0.05)
            continue
        ports = frozenset(entry["Service"]["Port"] for entry in json.loads(body))
        new_index = resp.getheader("X-Consul-Index") or "0"
        index = new_index if int(new_index) > 0 else "1"  # Consul's rule: never block on index 0
        if ports != seen:
            seen = ports
            emit(ports)


def show_servers_state(path: str, backend: str) -> Optional[bytes]:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(path)
            sock.sendall(f"show servers state {backend}\n".encode())
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    return b"".join(chunks)
                chunks.append(data)
    except OSError:
        return None  # HAProxy not up yet, or between a reload's workers


def routed_ports(answer: bytes) -> Tuple[bool, FrozenSet[int]]:
    """(parsed, ports of the servers HAProxy sends new requests to) from a `show servers state` answer."""
    lines = answer.decode(errors="replace").splitlines()
    if not lines or lines[0].strip() != "1":
        return False, frozenset()
    columns, ports = [], set()
    for line in lines[1:]:
        if line.startswith("#"):
            columns = line[1:].split()
        elif line.strip():
            row = dict(zip(columns, line.split()))
            if int(row["srv_op_state"]) == RUNNING and not int(row["srv_admin_state"]) & NOT_READY:
                ports.add(int(row["srv_port"]))
    return True, frozenset(ports)


def runtime_polls(path: str, backend: str) -> None:
    seen: Optional[FrozenSet[int]] = None
    while True:
        answer = show_servers_state(path, backend)
        if answer is not None:
            parsed, ports = routed_ports(answer)
            if parsed and ports != seen:
                seen = ports
                emit(ports)
        time.sleep(POLL)


def main(argv: list) -> int:
    if len(argv) != 3 or argv[0] not in ("floor", "haproxy"):
        print(__doc__, file=sys.stderr)
        return 2
    kind, where, service = argv
    (blocking_reads if kind == "floor" else runtime_polls)(where, service)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
