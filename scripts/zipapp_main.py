# basenode zipapp entry point (replaces shiv's two-line __main__.py; see scripts/build-zipapp.sh).
#
# shiv unpacks the bundled packages under ~/.shiv on first run. On a read-only root file
# system (or with no writable HOME) that fails, so pick a root that works before shiv runs:
# $SHIV_ROOT if set, else ~/.shiv if writable, else a private directory in the temp dir.
import contextlib
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


def _check_private(path):
    # The bundled packages are imported from here, as root often: only from a directory we own
    # and nobody else can write, or another user could plant code that we would then import.
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        sys.exit(
            f"basenode: {path} is not a private directory owned by uid {os.getuid()} (owner uid "
            f"{info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o}); fix it or set SHIV_ROOT"
        )
    return path


def _private_temp_root():
    # A shared temp dir is writable by everyone: the directory must be ours alone.
    path = os.path.join(tempfile.gettempdir(), f"basenode-shiv-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    return _check_private(path)


if not os.environ.get("SHIV_ROOT"):
    home_root = os.path.expanduser("~/.shiv")
    os.environ["SHIV_ROOT"] = _check_private(home_root) if _writable_dir(home_root) else _private_temp_root()


def _extracted_site_packages():
    """The site-packages a previous run unpacked for this very archive, or None.

    Fast path for every start after the first: shiv's bootstrap imports zipfile, hashlib
    (OpenSSL) and compileall and re-hashes every bundled file; as PID 1 that would cost ~5 MB
    for the container's whole life. The directory name carries the archive's build id (a hash
    of its contents), and shiv renames it into place only once fully unpacked.
    """
    if os.environ.get("SHIV_FORCE_EXTRACT"):
        return None
    import json
    import zipimport

    archive = os.path.realpath(sys.argv[0])
    try:
        env = json.loads(zipimport.zipimporter(archive).get_data("environment.json"))
    except (OSError, ValueError, zipimport.ZipImportError):
        return None
    name = f"{os.path.basename(archive)}_{env.get('build_id')}"
    site_packages = os.path.join(os.environ["SHIV_ROOT"], name, "site-packages")
    return site_packages if os.path.isdir(os.path.join(site_packages, "basenode")) else None


_site_packages = _extracted_site_packages()
if _site_packages:
    sys.path.insert(0, _site_packages)
    from basenode.cli import main

    sys.exit(main())

import _bootstrap  # noqa: E402  (shiv's bootstrap, bundled at the archive's root: first run)

_bootstrap.bootstrap()
