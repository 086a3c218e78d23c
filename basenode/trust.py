"""Which files and directories basenode may trust: who owns them and who else can write them.

basenode runs as root in most images and executes what some files say (plugins are Python code,
HAProxy's template can add `program` sections to a master that runs as root) or keeps its sockets
and ready files in a directory. A file that another local user can rewrite hands them basenode's
privileges, so, as sshd's StrictModes does, a file (and the directories that lead to it) is refused
when someone other than its owner can write it, or when its owner is neither root nor the user
basenode runs as. The state dir is stricter: ours alone, 0700, and no symlink.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UntrustedPath(Exception):
    """A file or directory basenode refuses to use; the message names it, its owner and mode."""


def describe(info: os.stat_result) -> str:
    """`owner uid 65534, mode 0777` (the facts an operator needs to fix it)."""
    return f"owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o}"


def _trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def _check_one(path: Path, what: str, sticky_ok: bool) -> None:
    try:
        info = os.stat(path)
    except OSError as e:
        raise UntrustedPath(f"{what} {path}: cannot stat: {e.strerror}") from None
    _check_info(path, info, what, sticky_ok)


def _check_info(path: Path, info: os.stat_result, what: str, sticky_ok: bool) -> None:
    mode = stat.S_IMODE(info.st_mode)
    if not _trusted_owner(info.st_uid):
        raise UntrustedPath(
            f"{what} {path} ({describe(info)}) is owned by neither root nor uid {os.geteuid()}: "
            "its owner could make basenode run anything"
        )
    writable_by_others = mode & (stat.S_IWGRP | stat.S_IWOTH)
    # /tmp (1777) is fine on the way to a file: only the owner of an entry can replace it there.
    if writable_by_others and not (sticky_ok and stat.S_ISDIR(info.st_mode) and mode & stat.S_ISVTX):
        raise UntrustedPath(
            f"{what} {path} ({describe(info)}) is writable by users other than its owner: "
            "run chmod go-w on it"
        )


def check_trusted(path: Path, what: str) -> None:
    """UntrustedPath unless `path` and every directory above it are owned by root or us and
    writable by nobody else (a sticky directory such as /tmp may be world-writable on the way)."""
    path = Path(os.path.abspath(path))
    _check_one(path, what, sticky_ok=False)
    for parent in path.parents:
        _check_one(parent, f"{what}'s directory", sticky_ok=True)


def check_trusted_file(path: Path, what: str) -> None:
    """check_trusted on what `path` points to: a symlink is judged by its target (and the link's own
    directory too, as whoever can write that could swap the link)."""
    path = Path(os.path.abspath(path))
    real = Path(os.path.realpath(path))
    if real != path:
        _check_one(path.parent, f"{what}'s directory", sticky_ok=True)
    check_trusted(real, what)


def read_trusted(path: Path, what: str) -> bytes:
    """The bytes of `path`, read from the very file that was checked (no swap between check and
    read): UntrustedPath as check_trusted_file, OSError when it cannot be read."""
    real = Path(os.path.realpath(os.path.abspath(path)))
    if real != Path(os.path.abspath(path)):
        _check_one(Path(os.path.abspath(path)).parent, f"{what}'s directory", sticky_ok=True)
    check_trusted(real.parent, f"{what}'s directory")
    with open(real, "rb") as f:
        _check_info(real, os.fstat(f.fileno()), what, sticky_ok=False)
        return f.read()


def prepare_private_dir(path: Path, what: str = "state dir") -> None:
    """The state dir: created 0700 when missing; when it exists, a real directory (not a symlink)
    owned by the running user, made 0700 if it was wider (a --tmpfs mount comes 1777).
    UntrustedPath when it is someone else's or not a directory; OSError when it cannot be made."""
    path = Path(path)
    try:
        os.makedirs(path.parent, mode=0o755, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise UntrustedPath(f"{what} {path} is a symlink (to {os.readlink(path)}): give a real directory")
    if not stat.S_ISDIR(info.st_mode):
        raise UntrustedPath(f"{what} {path} is not a directory")
    if info.st_uid != os.geteuid():
        raise UntrustedPath(
            f"{what} {path} ({describe(info)}) is not owned by uid {os.geteuid()}, which basenode runs as: "
            "another user could plant files or race its sockets there"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
