"""Hostile neighbours (issue 12): a local user, a child process or a bad value gets no further than its
own corner. Each test runs the real zipapp (as root, as the suite runs) and fails on basenode before
the fix it checks.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import pytest

from tests.conftest import ZIPAPP
from tests.support.ports import free_port

NOBODY = pwd.getpwnam("nobody")


def clean_env(**extra: str) -> Dict[str, str]:
    """The test's environment without basenode's or Consul's settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BASENODE_", "CONSUL_"))}
    env["BASENODE_CONFIG"] = os.devnull
    env.update(extra)
    return env


def run_argv(state_dir: Path, *options: str, command: Sequence[str] = ("true",)) -> list:
    if not ZIPAPP.exists():
        pytest.fail(f"{ZIPAPP} is missing; run `make zipapp`", pytrace=False)
    return [
        sys.executable,
        str(ZIPAPP),
        "run",
        "--no-consul",
        "--no-haproxy",
        "--state-dir",
        str(state_dir),
        "--status-addr",
        f"127.0.0.1:{free_port()}",
        *options,
        "--",
        *command,
    ]


def run_once(
    state_dir: Path, *options: str, command: Sequence[str] = ("true",), env: Optional[Dict[str, str]] = None
) -> subprocess.CompletedProcess:
    """`basenode run ... -- COMMAND` to its end: (status, output)."""
    return subprocess.run(
        run_argv(state_dir, *options, command=command),
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- 6. the state dir ---------------------------------------------------------------------------


def test_a_world_writable_state_dir_of_ours_is_made_0700(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o1777)  # what `docker run --tmpfs /run/basenode` gives
    done = run_once(state)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(os.lstat(state).st_mode) == 0o700


def test_a_state_dir_owned_by_another_user_is_refused_before_anything_starts(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY.pw_uid, NOBODY.pw_gid)
    marker = tmp_path / "app-ran"
    done = run_once(state, command=("touch", str(marker)))
    assert done.returncode == 2
    assert str(state) in done.stderr and f"owner uid {NOBODY.pw_uid}" in done.stderr, done.stderr
    assert not marker.exists(), "the application ran in a state dir another user controls"
    assert not (state / "control.sock").exists()


def test_a_state_dir_that_is_a_symlink_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    state = tmp_path / "state"
    state.symlink_to(target)
    done = run_once(state)
    assert done.returncode == 2
    assert f"state dir {state} is a symlink" in done.stderr, done.stderr
    assert not (target / "control.sock").exists()
