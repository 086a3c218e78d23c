"""Files basenode writes: atomically, so a reader sees the old content or the new, never a mix."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Optional, Tuple


def write_atomic(
    path: Path, text: str, mode: int = 0o600, owner: Optional[Tuple[int, int]] = None, durable: bool = True
) -> None:
    """Replace `path` with `text` so that readers see the old file or the new one, never a mix.

    `owner` is (uid, gid), -1 for "leave as is"; set before the rename, so the file never appears
    with the wrong owner. `durable`: on disk before this returns (fsync of the file and its
    directory); without it the replacement is still atomic for every reader, only a power cut may
    lose it, which is fine for a file that is rendered again at every start.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            f.write(text)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def promote(candidate: Path, live: Path, durable: bool = True) -> None:
    """Rename a checked candidate over the live file (same directory: atomic); `durable` as in
    write_atomic."""
    os.replace(candidate, live)
    if durable:
        fsync_dir(live.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(str(directory), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
