"""Files basenode writes: atomically, so a reader sees the old content or the new, never a mix; and
read back, when it is what this process last wrote, from memory."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Dict, Optional, Tuple


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


# The text this process last wrote to a file, by the file's identity and times: HAProxy's config is
# read back on every change, and at 1,000 routes reading half a megabyte (and hashing it again for
# parse_config's cache) costs more than the change. A file changed by anyone else has another stamp.
_WRITTEN: Dict[Path, Tuple[Tuple[int, ...], str]] = {}


def _stamp(path: Path) -> Tuple[int, ...]:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_text(path: Path) -> Optional[str]:
    """The file's text (None when there is none), from memory when it is what remember_text() kept."""
    try:
        stamp = _stamp(path)
        known = _WRITTEN.get(path)
        if known is not None and known[0] == stamp:
            return known[1]
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    _WRITTEN[path] = (stamp, text)  # a write between stat and read changes the stamp: read again next time
    return text


def remember_text(path: Path, text: str) -> None:
    """`text` is what `path` holds now (just written or renamed into place)."""
    if len(_WRITTEN) > 8:  # one such file per process in practice; tests make many
        _WRITTEN.clear()
    try:
        _WRITTEN[path] = (_stamp(path), text)
    except OSError:
        _WRITTEN.pop(path, None)
