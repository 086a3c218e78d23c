"""A real pseudo-terminal for tests: a command runs on its slave side, the test types on the master.

`Terminal(argv)` starts `argv` as the leader of a new session whose controlling terminal is the
pty (`setsid -c`, as a login shell or `docker run -t` gets it), with the pty as its stdin, stdout
and stderr. A thread reads everything the terminal shows; `wait_for(text)` waits until it has
shown `text`, `write(data)` types (b"\\x03" is Ctrl-C, b"\\x04" Ctrl-D at the start of a line).
"""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import threading
from typing import Mapping, Optional, Sequence

import pytest

from tests.support.supervise_helpers import ROOT, wait_for_text


class Terminal:
    def __init__(self, argv: Sequence[str], env: Optional[Mapping[str, str]] = None) -> None:
        setsid = shutil.which("setsid")
        if setsid is None:
            pytest.fail("setsid (util-linux) not found", pytrace=False)
        self.master, slave = pty.openpty()
        try:
            self.proc = subprocess.Popen(
                [setsid, "-c", *argv],
                cwd=ROOT,
                env=dict(env) if env is not None else None,
                stdin=slave,
                stdout=slave,
                stderr=slave,
            )
        finally:
            os.close(slave)
        self.screen = bytearray()
        self.reader = threading.Thread(target=self._read, name="terminal-reader", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO: every process that had the terminal open is gone
                return
            if not chunk:
                return
            self.screen.extend(chunk)

    def text(self) -> str:
        """What the terminal showed so far, with the terminal's CR LF as plain newlines."""
        return bytes(self.screen).decode(errors="replace").replace("\r\n", "\n")

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        return wait_for_text(self.text, text, timeout=timeout)

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait(self, timeout: float = 30.0) -> int:
        """The command's exit status; on timeout it is stopped and the test fails with the screen."""
        try:
            status = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise AssertionError(
                f"still running after {timeout}s; the terminal shows:\n{self.text()}"
            ) from None
        self.reader.join(timeout=10)
        return status

    def close(self) -> None:
        """Teardown: SIGTERM (SIGKILL if it lingers), then the master side."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
