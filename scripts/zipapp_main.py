# basenode zipapp entry point (replaces shiv's two-line __main__.py; see scripts/build-zipapp.sh).
#
# shiv unpacks the bundled packages under ~/.shiv on first run. On a read-only root file
# system (or with no writable HOME) that fails, so pick a root that works before shiv runs:
# $SHIV_ROOT if set, else ~/.shiv if writable, else a private directory in the temp dir.
import os
import stat
import sys
import tempfile


def _writable_dir(path):
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def _private_temp_root():
    # A shared temp dir is writable by everyone: only use a directory we own and nobody
    # else can write, or another user could plant code that we would then import.
    path = os.path.join(tempfile.gettempdir(), "basenode-shiv-%d" % os.getuid())
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        sys.exit("basenode: %s is not a private directory owned by uid %d; set SHIV_ROOT" % (path, os.getuid()))
    return path


if not os.environ.get("SHIV_ROOT"):
    home_root = os.path.expanduser("~/.shiv")
    os.environ["SHIV_ROOT"] = home_root if _writable_dir(home_root) else _private_temp_root()

import _bootstrap  # noqa: E402  (shiv's bootstrap, bundled at the archive's root)

_bootstrap.bootstrap()
