"""What a running process holds, read from /proc: threads, and TCP connections to a port."""

from __future__ import annotations

import contextlib
import os
from typing import Set


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError(f"no Threads line for pid {pid}")


def sockets(pid: int) -> Set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def connections_to(pid: int, port: int) -> int:
    """Established TCP connections of process `pid` to local port `port` (IPv4 and IPv6)."""
    ours = sockets(pid)
    count = 0
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                established = fields[3] == "01"
                if established and int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in ours:
                    count += 1
    return count
