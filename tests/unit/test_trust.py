"""trust.py: StrictModes-like checks on files basenode runs or renders, and the private state dir."""

from __future__ import annotations

import os
import pwd
import re

import pytest

from basenode import trust

NOBODY = pwd.getpwnam("nobody").pw_uid


def test_a_file_of_ours_nobody_else_can_write_is_trusted(tmp_path):
    path = tmp_path / "f"
    path.write_text("x")
    trust.check_trusted_file(path, "plugin")
    assert trust.read_trusted(path, "plugin") == b"x"


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda p: os.chmod(p, 0o664), "mode 0664) is writable by users other than its owner"),
        (lambda p: os.chmod(p.parent, 0o777), "plugin's directory"),
        (lambda p: os.chown(p, NOBODY, -1), f"owner uid {NOBODY}, mode 0644) is owned by neither root"),
    ],
)
def test_a_file_someone_else_can_change_is_refused_naming_it(tmp_path, change, expected):
    path = tmp_path / "d" / "f"
    path.parent.mkdir(mode=0o755)
    path.write_text("x")
    os.chmod(path, 0o644)
    change(path)
    for check in (trust.check_trusted_file, trust.read_trusted):
        with pytest.raises(trust.UntrustedPath, match=re.escape(expected)):
            check(path, "plugin")


def test_a_symlink_is_judged_by_its_target_and_its_own_directory(tmp_path):
    target = tmp_path / "real"
    target.write_text("x")
    link_dir = tmp_path / "links"
    link_dir.mkdir(mode=0o755)
    (link_dir / "f").symlink_to(target)
    trust.check_trusted_file(link_dir / "f", "template")
    os.chmod(link_dir, 0o777)
    with pytest.raises(trust.UntrustedPath, match="template's directory"):
        trust.check_trusted_file(link_dir / "f", "template")


def test_the_sticky_tmp_is_fine_on_the_way(tmp_path):
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    (sticky / "f").write_text("x")
    trust.check_trusted_file(sticky / "f", "template")


def test_the_private_dir_is_made_0700_or_refused(tmp_path):
    made = tmp_path / "a" / "state"
    trust.prepare_private_dir(made)
    assert oct(os.stat(made).st_mode & 0o7777) == "0o700"
    os.chmod(made, 0o1777)
    trust.prepare_private_dir(made)
    assert oct(os.stat(made).st_mode & 0o7777) == "0o700"
    os.chown(made, NOBODY, -1)
    with pytest.raises(trust.UntrustedPath, match="is not owned by uid 0"):
        trust.prepare_private_dir(made)
    (tmp_path / "file").write_text("")
    with pytest.raises(trust.UntrustedPath, match="is not a directory"):
        trust.prepare_private_dir(tmp_path / "file")
