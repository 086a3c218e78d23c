"""Rounds of TemplateSet: what a failure makes due again, and what it must not stop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from basenode.config import Settings, TemplateSpec
from basenode.snapshot import Snapshot
from basenode.templateset import TemplateSet

EMPTY = Snapshot(routes=())


def settings_for(tmp_path: Path, *specs: TemplateSpec) -> Settings:
    return Settings(templates=specs, plugins_dir=tmp_path, state_dir=tmp_path)


def spec(tmp_path: Path, name: str, text: str, **fields: Any) -> TemplateSpec:
    source = tmp_path / f"{name}.j2"
    source.write_text(text)
    return TemplateSpec(name=name, source=source, destination=tmp_path / f"{name}.conf", **fields)


def test_a_template_broken_from_the_start_fails_once_then_waits_for_an_edit(tmp_path):
    broken = spec(tmp_path, "broken", "{% if %}\n")
    templates = TemplateSet(settings_for(tmp_path, broken))
    for _ in range(3):  # what three ticks of the sync loop do
        if templates.due():
            templates.render_round({}, EMPTY)
    assert templates.status["broken"].render_errors == 1
    (tmp_path / "broken.j2").write_text("fixed\n")
    assert templates.due() == [broken]
    templates.render_round({}, EMPTY)
    assert (tmp_path / "broken.conf").read_text() == "fixed\n"


def test_a_destination_that_cannot_be_written_fails_its_template_only(tmp_path):
    odd = spec(tmp_path, "odd", "a\n")
    (tmp_path / "odd.conf").mkdir()  # a directory where the file should be
    good = spec(tmp_path, "good", "b\n")
    templates = TemplateSet(settings_for(tmp_path, odd, good))
    assert templates.render_round({}, EMPTY) == 1
    assert templates.status["odd"].output_errors == 1
    assert "IsADirectoryError" in (templates.status["odd"].last_error or "")
    assert (tmp_path / "good.conf").read_text() == "b\n"
    assert templates.status["good"].last_error is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_failed_reload_is_retried_until_it_works_without_writing_again(tmp_path):
    ready, reloads = tmp_path / "ready", tmp_path / "reloads"
    reloading = spec(
        tmp_path, "r", "x\n", reload_command=(f"test -e {ready} && echo reloaded >> {reloads}",), shell=True
    )
    clock = Clock()
    templates = TemplateSet(settings_for(tmp_path, reloading), clock=clock)
    templates.render_round({}, EMPTY)
    status = templates.status["r"]
    assert (status.writes, status.reload_failures) == (1, 1)
    assert (tmp_path / "r.conf").read_text() == "x\n"  # in place, but the program runs the old one
    assert templates.due() == []  # not before the retry time
    clock.now += 2.5
    templates.render_round({}, EMPTY)
    assert (status.writes, status.reload_failures) == (1, 2) and status.last_error is not None
    ready.touch()
    clock.now += 2.5
    assert templates.due() == [reloading]
    templates.render_round({}, EMPTY)
    assert reloads.read_text() == "reloaded\n" and status.last_error is None
    clock.now += 10
    assert templates.due() == []  # done: no more reloads
    assert (status.writes, status.reload_failures) == (1, 2)


def test_a_rejected_file_is_checked_again_later(tmp_path):
    ready = tmp_path / "ready"
    checked = spec(tmp_path, "c", "x\n", check=("test", "-e", str(ready)))
    clock = Clock()
    templates = TemplateSet(settings_for(tmp_path, checked), clock=clock)
    templates.render_round({}, EMPTY)
    assert templates.status["c"].check_failures == 1 and not (tmp_path / "c.conf").exists()
    ready.touch()  # what the check needed (a certificate, a directory) appears
    clock.now += 2.5
    assert templates.render_round({}, EMPTY) == 1
    assert (tmp_path / "c.conf").read_text() == "x\n" and templates.status["c"].last_error is None
