"""A real HAProxy in master-worker mode (`haproxy -W -S ...`) with its state dir in a temp dir."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path
from typing import Optional

from basenode.config import Settings
from basenode.output import haproxy

from .waiting import eventually


class HAProxy:
    """Started from settings.haproxy_cfg, exactly as basenode's supervisor starts it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc: Optional[subprocess.Popen] = None
        self.log = Path(settings.state_dir) / "haproxy.log"

    def start(self) -> HAProxy:
        command = haproxy.program(self.settings).command
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        eventually(self._up, timeout=10, what=f"haproxy up (log: {self.log})")
        return self

    def _up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"haproxy exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}"
            )
        try:
            proc = haproxy.show_proc(self.settings.haproxy_master_socket, timeout=1.0)
        except haproxy.RuntimeAPIError:
            return False
        info_pid = haproxy.stats_pid(self.settings.haproxy_stats_socket)
        return bool(proc.workers) and info_pid in proc.workers

    def proc_info(self) -> haproxy.ProcInfo:
        return haproxy.show_proc(self.settings.haproxy_master_socket)

    def worker_pid(self) -> int:
        return int(haproxy.show_info(self.settings.haproxy_stats_socket)["Pid"])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # The whole process group: the master and its workers (old ones too).
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


class CountingHAProxy:
    """A `haproxy_bin` that writes one line to `calls` for every `haproxy -c`, then runs the real
    binary with the same arguments: the number of checks basenode spawned, counted from outside."""

    def __init__(self, directory: Path, real: str) -> None:
        self.calls = directory / "haproxy-checks.log"
        self.path = directory / "haproxy-counting"
        calls, binary = shlex.quote(str(self.calls)), shlex.quote(real)
        self.path.write_text(
            "#!/bin/sh\n"
            f'for arg in "$@"; do if [ "$arg" = "-c" ]; then echo "$$ $*" >> {calls}; fi; done\n'
            f'exec {binary} "$@"\n'
        )
        self.path.chmod(0o755)

    def checks(self) -> int:
        try:
            return len(self.calls.read_text().splitlines())
        except FileNotFoundError:
            return 0
