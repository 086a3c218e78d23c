"""Plugins report their faults with file:line; outputs check a candidate before it replaces a destination."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from basenode.config import TemplateSpec
from basenode.output import file as outputs
from basenode.snapshot import Snapshot
from basenode.template.functions import FUNCTION_NAMES
from basenode.template.plugins import PluginError, Plugins

EMPTY = Snapshot(routes=())


def plugins_with(tmp_path: Path, source: str) -> Plugins:
    (tmp_path / "p.py").write_text(source)
    return Plugins(tmp_path, reserved=FUNCTION_NAMES)


@pytest.mark.parametrize(
    "source, message",
    [
        (
            "def context(snapshot):\n    x = 1\n    return {}['missing']\n",
            "p.py:3: context() raised KeyError: 'missing'",
        ),
        ("def context(snapshot):\n    return ['a']\n", "p.py:1: context() returned list, not a dict"),
        (
            "def context(snapshot):\n    return {'kv': 1}\n",
            "p.py:1: context() returned 'kv': a template function's name",
        ),
        (
            "def context(snapshot):\n    return {'a b': 1}\n",
            "p.py:1: context() returned the key 'a b', not a name",
        ),
        ("def context(snapshot)\n    return {}\n", "p.py:1: SyntaxError: "),
        ("x = 1\ny = 1 / 0\n", "p.py:2: loading raised ZeroDivisionError: division by zero"),
        ("CONTEXT = {}\n", "p.py: defines no context(snapshot) function"),
        (
            "import sys\ndef context(snapshot):\n    sys.exit(3)\n",
            "p.py:3: context() raised SystemExit: 3",  # not the end of the sync process
        ),
        ("import sys\nsys.exit('bye')\n", "p.py:2: loading raised SystemExit: bye"),
    ],
)
def test_a_faulty_plugin_is_reported_with_its_file_and_line(tmp_path, source, message):
    with pytest.raises(PluginError) as e:
        plugins_with(tmp_path, source).context("p", EMPTY)
    assert str(e.value).replace(f"{tmp_path}/", "").startswith(message)


def test_a_plugin_is_loaded_again_when_its_file_changes_even_within_the_same_second(tmp_path):
    plugins = plugins_with(tmp_path, "def context(snapshot):\n    return {'v': 1}\n")
    assert plugins.context("p", EMPTY) == {"v": 1}
    mtime = (tmp_path / "p.py").stat().st_mtime_ns
    (tmp_path / "p.py").write_text("def context(snapshot):\n    return {'v': 2}\n")  # same length
    os.utime(tmp_path / "p.py", ns=(mtime, mtime + 1))
    assert plugins.context("p", EMPTY) == {"v": 2}


def spec(tmp_path: Path, **fields) -> TemplateSpec:
    return TemplateSpec(name="t", source=tmp_path / "t.j2", destination=tmp_path / "out.conf", **fields)


def test_a_rejected_candidate_leaves_the_destination_and_no_candidate(tmp_path):
    (tmp_path / "out.conf").write_text("old\n")
    rejecting = spec(tmp_path, check=("grep", "-q", "good", "{candidate}"))
    with pytest.raises(outputs.CheckFailed) as e:
        outputs.apply(rejecting, "bad\n", tmp_path)
    assert "exit status 1" in str(e.value)
    assert (tmp_path / "out.conf").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.conf"]


def test_the_destination_is_written_with_its_mode_only_when_the_text_changed(tmp_path):
    marker = tmp_path / "reloads"
    written = spec(
        tmp_path,
        mode=0o640,
        check=("test -s {candidate}",),
        reload_command=(f"echo reloaded {{dest}} >> {marker}",),
        shell=True,
    )
    assert outputs.apply(written, "new\n", tmp_path) == "written"
    assert stat.S_IMODE((tmp_path / "out.conf").stat().st_mode) == 0o640
    assert outputs.apply(written, "new\n", tmp_path) == "unchanged"
    assert marker.read_text() == f"reloaded {tmp_path}/out.conf\n"  # one reload, for the one write


def test_paths_are_quoted_for_the_shell_and_passed_as_words_without_it(tmp_path):
    odd = Path("/tmp/a dir/it's.conf")
    assert outputs.substitute(["nginx", "-t", "-c", "{candidate}"], False, odd, odd) == [
        "nginx",
        "-t",
        "-c",
        "/tmp/a dir/it's.conf",
    ]
    assert outputs.substitute(["cat {dest}"], True, odd, odd) == [
        "/bin/sh",
        "-c",
        "cat '/tmp/a dir/it'\"'\"'s.conf'",
    ]


def test_a_failing_reload_command_is_reported_after_the_file_is_in_place(tmp_path):
    failing = spec(tmp_path, reload_command=("false",))
    with pytest.raises(outputs.ReloadFailed):
        outputs.apply(failing, "x\n", tmp_path)
    assert (tmp_path / "out.conf").read_text() == "x\n"


def test_a_reload_program_without_a_running_basenode_is_a_reload_failure(tmp_path):
    signalling = spec(tmp_path, reload_program="web")
    with pytest.raises(outputs.ReloadFailed) as e:
        outputs.apply(signalling, "x\n", tmp_path)
    assert str(e.value).startswith("signal web: control socket")


def test_the_owner_is_set_before_the_file_appears(tmp_path):
    import grp
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    owned = spec(
        tmp_path, owner=user, group=group, check=("sh", "-c", 'test "$(stat -c %U {candidate})" = ' + user)
    )
    assert outputs.apply(owned, "x\n", tmp_path) == "written"
    info = (tmp_path / "out.conf").stat()
    assert (info.st_uid, info.st_gid) == (os.getuid(), os.getgid())
