"""A small tmpfs to run out of space on, for tests of a full state dir (needs root, as the suite runs)."""

from __future__ import annotations

import errno
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


@contextmanager
def small_tmpfs(path: Path, size: str = "1m") -> Iterator[Path]:
    """`path` (created 0700) with a tmpfs of `size` mounted on it; unmounted however the test ends."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "basenode-test", str(path)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs on {path} (the suite runs as root): {mount.stderr}", pytrace=False)
    try:
        yield path
    finally:
        # Lazy: a process of the test that still has a file open there must not leave it mounted.
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill(directory: Path) -> Path:
    """Write a file in `directory` until the file system is full; returns it (unlink it to free the space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    chunk = b"\0" * 65536
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return filler
                chunk = chunk[: len(chunk) // 2]  # fill the last partial page too
    finally:
        os.close(fd)
