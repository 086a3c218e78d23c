"""Rounds of TemplateSet: what a failure makes due again, and what it must not stop."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterable, List

from basenode import sync
from basenode.config import Settings, TemplateSpec
from basenode.dependency import KEY, Query
from basenode.routes import ROUTES_QUERY
from basenode.snapshot import Snapshot
from basenode.template.loop import TemplateLoop, TemplateSet

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


def test_a_template_edited_to_not_compile_is_not_rendered_again_on_new_data(tmp_path):
    app = spec(tmp_path, "app", "{{ kv('app/x') }}\n")
    key = Query(KEY, "app/x")
    templates = TemplateSet(settings_for(tmp_path, app))
    templates.render_round({key: "one"}, EMPTY)
    (tmp_path / "app.j2").write_text("{% if %}\n")
    templates.render_round({key: "one"}, EMPTY)  # the edit: one error, logged once
    assert templates.status["app"].render_errors == 1
    assert templates.due(changed={key}) == []  # the same syntax error would be logged on every change
    (tmp_path / "app.j2").write_text("x = {{ kv('app/x') }}\n")
    templates.render_round({key: "two"}, EMPTY, changed={key})
    assert (tmp_path / "app.conf").read_text() == "x = two\n"
    assert templates.status["app"].render_errors == 1


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


class FakeWatcher:
    """The watch's cache without Consul: tests set `values`; rounds read a copy of it. Records what
    each owner wants."""

    def __init__(self, values: Dict[Query, Any]) -> None:
        self.values = values
        self.wants: Dict[str, FrozenSet[Query]] = {}

    def data(self) -> Dict[Query, Any]:
        return dict(self.values)

    def want(self, owner: str, queries: Iterable[Query]) -> None:
        self.wants[owner] = frozenset(queries)

    def indexes(self) -> Dict[Query, int]:
        return {}


def test_a_slow_haproxy_apply_does_not_let_an_older_view_of_consul_overwrite_a_newer_render(tmp_path):
    (tmp_path / "p.py").write_text("def context(snapshot):\n    return {}\n")  # re-rendered per snapshot
    app = spec(tmp_path, "app", "{{ kv('app/x') }}\n", plugins=("p",))
    settings = settings_for(tmp_path, app)
    key = Query(KEY, "app/x")
    cache = FakeWatcher({key: "old"})
    loop = sync.Loop(settings, watcher=cache)  # type: ignore[arg-type]
    loop.start()
    assert (tmp_path / "app.conf").read_text() == "old\n"
    newer: List[threading.Thread] = []

    def slow_haproxy_apply(*args: Any, **kwargs: Any) -> None:
        # While HAProxy applies the snapshot, the value changes and the watch reports it (its thread).
        cache.values = {**cache.values, key: "new"}
        newer.append(threading.Thread(target=loop.on_change, args=(frozenset({key}),)))
        newer[0].start()

    loop._apply = slow_haproxy_apply  # type: ignore[method-assign]
    cache.values = {**cache.values, ROUTES_QUERY: ()}  # the routes arrive: a snapshot to apply
    loop.on_change(frozenset({ROUTES_QUERY}))
    newer[0].join(10)
    assert (tmp_path / "app.conf").read_text() == "new\n"


def test_the_sync_loop_is_ready_once_every_template_rendered_or_the_grace_is_over(tmp_path):
    app = spec(tmp_path, "app", "{{ kv('app/x') }}\n")
    settings = Settings(templates=(app,), plugins_dir=tmp_path, state_dir=tmp_path, run_haproxy=False)
    key = Query(KEY, "app/x")
    cache = FakeWatcher({})
    loop = sync.Loop(settings, watcher=cache)  # type: ignore[arg-type]
    loop.start()  # asks for the key: waiting, nothing written
    assert cache.wants == {"templates": frozenset({key})}
    assert not loop.ready(grace_over=False)
    assert loop.ready(grace_over=True)  # start anyway: Consul may not answer for a long time
    cache.values = {key: "v"}
    loop.on_change(frozenset({key}))
    assert (tmp_path / "app.conf").read_text() == "v\n" and loop.ready(grace_over=False)


def test_with_haproxy_the_sync_loop_is_not_ready_before_its_config_is_in_place(tmp_path):
    settings = Settings(plugins_dir=tmp_path, state_dir=tmp_path)
    cache = FakeWatcher({})
    loop = sync.Loop(settings, watcher=cache)  # type: ignore[arg-type]
    loop.start()
    assert cache.wants["routes"] == frozenset({ROUTES_QUERY})  # HAProxy's routes are asked for first
    assert not loop.ready(grace_over=True)  # HAProxy would start on no config at all
    loop.applied = EMPTY
    assert loop.ready(grace_over=False)


def test_a_template_loop_round_renders_from_the_data_given_and_says_what_its_templates_use(tmp_path):
    app = spec(tmp_path, "app", "{{ kv('app/x') }} {{ kv('app/y', 'none') }}\n")
    settings = settings_for(tmp_path, app)
    x, y = Query(KEY, "app/x"), Query(KEY, "app/y")
    cache = FakeWatcher({})
    templates = TemplateLoop(settings, cache)  # type: ignore[arg-type]
    assert templates.round({}) == 0 and templates.waiting()
    assert cache.wants["templates"] == {x, y}
    assert templates.round({x: "1", y: None}, changed={x, y}) == 1
    assert (tmp_path / "app.conf").read_text() == "1 none\n" and not templates.waiting()
    assert templates.round({x: "1", y: None}, changed={Query(KEY, "elsewhere")}) == 0  # not due
