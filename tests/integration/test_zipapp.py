"""The zipapp: one file, pure Python, runs on CPython 3.9-3.13, and on a read-only root file system."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from basenode import __version__

COMPILED = (".so", ".pyd", ".dylib", ".dll")


def interpreters() -> list[str]:
    """Every CPython 3.9+ on this machine: the system's, and pyenv's where installed."""
    found = {os.path.realpath(p) for p in ("/usr/bin/python3",) if os.path.exists(p)}
    found |= {os.path.realpath(p) for p in glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3"))}
    found.add(os.path.realpath(sys.executable))
    usable = []
    for path in sorted(found):
        out = subprocess.run(
            [path, "-c", "import sys; print(sys.version_info >= (3, 9))"], capture_output=True, text=True
        )
        if out.stdout.strip() == "True":
            usable.append(path)
    return usable


def test_the_archive_bundles_no_compiled_extension_modules(zipapp: Path):
    with zipfile.ZipFile(zipapp) as archive:
        names = archive.namelist()
    assert [n for n in names if n.endswith(COMPILED)] == []
    # and it does bundle what it needs, pure: the packages and the default template
    for needed in (
        "site-packages/consul/__init__.py",
        "site-packages/jinja2/__init__.py",
        "site-packages/markupsafe/_native.py",
        "site-packages/tomli/__init__.py",
        "site-packages/basenode/templates/haproxy.cfg.j2",
    ):
        assert needed in names


@pytest.mark.parametrize("python", interpreters())
def test_version_runs_on_every_python_on_the_machine(zipapp: Path, python: str, tmp_path: Path):
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("SHIV_ROOT", None)
    out = subprocess.run(
        [python, str(zipapp), "version"], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"basenode {__version__}"
    assert any(line.startswith("py-consul ") for line in lines)
    assert any(line.startswith("jinja2 ") for line in lines)
    # the bundled packages were unpacked under the writable HOME
    assert list((tmp_path / ".shiv").glob("basenode_*/site-packages/jinja2"))


def version_with_read_only_home(zipapp: Path, home: Path, temp: Path) -> subprocess.CompletedProcess:
    """`basenode version` with HOME on a read-only mount and TMPDIR=temp.

    Root ignores permission bits, so HOME is made truly read-only with a read-only bind mount
    in a private mount namespace.
    """
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed for this test; run `make deps`")
    home.mkdir()
    temp.mkdir(exist_ok=True)
    script = (
        f"mount --bind {home} {home} && mount -o remount,bind,ro {home} {home} && "
        f"HOME={home} TMPDIR={temp} {sys.executable} {zipapp} version"
    )
    env = {k: v for k, v in os.environ.items() if k != "SHIV_ROOT"}
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=60
    )


def test_it_runs_with_a_read_only_home_by_unpacking_into_a_private_temp_dir(zipapp: Path, tmp_path: Path):
    home, temp = tmp_path / "home", tmp_path / "tmp"
    out = version_with_read_only_home(zipapp, home, temp)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"basenode {__version__}\n")
    assert not (home / ".shiv").exists()
    private = temp / f"basenode-shiv-{os.getuid()}"
    assert private.is_dir() and (private.stat().st_mode & 0o777) == 0o700


def test_it_refuses_a_temp_dir_root_that_others_could_write(zipapp: Path, tmp_path: Path):
    temp = tmp_path / "tmp"
    planted = temp / f"basenode-shiv-{os.getuid()}"
    planted.mkdir(parents=True)
    planted.chmod(0o777)
    out = version_with_read_only_home(zipapp, tmp_path / "home", temp)
    assert out.returncode != 0
    assert f"{planted} is not a private directory" in out.stderr
