"""A network namespace of its own for one test: the test's thread and everything it starts.

The drain counts every connection its namespace accepts (PassiveOpens), and a shared machine's
host namespace accepts hundreds a second from whatever else runs there; a test of "no traffic"
needs a namespace where nothing else happens. `own_network_namespace()` moves the calling thread
(pytest's) into a new namespace with only loopback up, so that the Consul agent, basenode, the app
and the test's own sockets all live there, and moves it back on exit. Needs root
(CAP_SYS_ADMIN), as Docker tests need the engine: without it the test fails, it never skips.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import time
from typing import Iterator

import pytest

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        pytest.fail(f"setns(CLONE_NEWNET) failed: {os.strerror(err)} (needs root)", pytrace=False)


@contextlib.contextmanager
def own_network_namespace() -> Iterator[None]:
    holder = subprocess.Popen(["unshare", "--net", "sleep", "3600"], stderr=subprocess.PIPE)
    ours = os.readlink("/proc/self/ns/net")
    try:
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{holder.pid}/ns/net") == ours:
            if holder.poll() is not None or time.monotonic() > deadline:
                err = holder.stderr.read().decode(errors="replace") if holder.stderr else ""
                pytest.fail(f"unshare --net failed (needs root): {err.strip()}", pytrace=False)
            time.sleep(0.01)
        back = os.open("/proc/self/ns/net", os.O_RDONLY)
        target = os.open(f"/proc/{holder.pid}/ns/net", os.O_RDONLY)
        try:
            _setns(target)
            try:
                subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
                yield
            finally:
                _setns(back)
        finally:
            os.close(target)
            os.close(back)
    finally:
        holder.kill()
        holder.wait()
