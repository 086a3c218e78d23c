"""The configured templates ([templates.NAME], --template-spec) as one set, rendered round by round.

A round renders, from one copy of the dependency cache (one consistent view of Consul), the templates
that need it: those never rendered, those waiting for data, those using a query that changed, those
whose template or plugin file changed, and those with plugins when the discovery snapshot changed
(plugins read it). Each goes through output.record.attempt, the step HAProxy's config takes too:
render, then outputs.apply (written only when its text changed, checked, promoted atomically,
reloaded). Whatever fails (render, plugin, check, reload) is counted in the template's record and
logged with where it came from; the last good file stays. A failed check, write or reload (which a
fixed program or file system may make work without any input changing) is due again every
RETRY_SECONDS; a failed reload is retried on its own, the file being in place already. After a round,
`wanted()` is what the watch must follow: the union of what the templates' last renders used.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Dict, FrozenSet, List, Optional, Set, Tuple

from ..config import Settings, TemplateSpec
from ..dependency import READ_ERRORS, Query, fetch_now
from ..output import file as outputs
from ..output.record import RETRY_SECONDS, OutputFailed, OutputRecord, attempt
from ..routes import static_snapshot
from ..snapshot import Snapshot
from ..watch import Watcher
from . import functions as templates
from . import render
from .functions import Data, redact
from .plugins import PluginError, Plugins

log = logging.getLogger(__name__)


@dataclass
class TemplateStatus(OutputRecord):
    """What one template last did (its output's record), for status output and tests."""

    destination: str = ""
    renders: int = 0
    writes: int = 0  # the destination replaced (and its reload action taken)
    plugin_errors: int = 0
    reload_failures: int = 0
    output_errors: int = 0  # the destination (or its candidate) could not be read, written or owned
    last_write: Optional[float] = None
    waiting_for: List[str] = field(default_factory=list)  # queries with no data yet


class TemplateSet:
    """Every configured template, its compiled source, its last render's queries and its status.

    Not thread-safe: the sync loop calls it under its own lock.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self.specs: Tuple[TemplateSpec, ...] = settings.templates
        self.sources = {spec.name: render.TemplateSource(spec.source) for spec in self.specs}
        self.plugins = Plugins(settings.plugins_dir, reserved=templates.FUNCTION_NAMES)
        self.status = {spec.name: TemplateStatus(destination=str(spec.destination)) for spec in self.specs}
        self._used: Dict[str, FrozenSet[Query]] = {}
        self._missing: Dict[str, FrozenSet[Query]] = {}
        self._given: Dict[str, Tuple[Tuple[str, str], ...]] = {}  # the last render's KV and env() values
        self._stamps: Dict[str, Tuple[Any, ...]] = {}  # template and plugin files at the last render
        self._reload_pending: Set[str] = set()  # written, but the reload failed: the program runs the old
        self._uncompiled: Set[str] = set()  # the template file as it is now does not compile

    def all_rendered(self) -> bool:
        """Every template has had its first render, good or failed (one waiting for data has not)."""
        return all(spec.name in self._used and not self._missing.get(spec.name) for spec in self.specs)

    def wanted(self) -> FrozenSet[Query]:
        return frozenset().union(*self._used.values()) if self._used else frozenset()

    def missing(self, name: str) -> FrozenSet[Query]:
        """What the last render of template `name` lacked."""
        return self._missing.get(name, frozenset())

    def _file_stamps(self, spec: TemplateSpec) -> Tuple[Any, ...]:
        return (self.sources[spec.name].file_stamp(), *(self.plugins.stamp(p) for p in spec.plugins))

    def due(self, changed: Collection[Query] = (), snapshot_changed: bool = False) -> List[TemplateSpec]:
        """The templates this round must render (see the module docstring)."""
        changed = frozenset(changed)
        now = self._clock()
        return [spec for spec in self.specs if self._is_due(spec, changed, snapshot_changed, now)]

    def _is_due(
        self, spec: TemplateSpec, changed: FrozenSet[Query], snapshot_changed: bool, now: float
    ) -> bool:
        if self._stamps.get(spec.name) != self._file_stamps(spec):
            return True  # never rendered, or its template or a plugin file was edited
        if spec.name in self._uncompiled:
            return False  # new data cannot mend a template that does not compile: only an edit can
        return bool(
            spec.name not in self._used
            or self._missing.get(spec.name)
            or self._used[spec.name] & changed
            or (snapshot_changed and spec.plugins)
            or self.status[spec.name].due(now)
        )

    def render_round(
        self,
        data: Data,
        snapshot: Snapshot,
        changed: Collection[Query] = (),
        snapshot_changed: bool = False,
    ) -> int:
        """Render and apply what is due, all from `data`; returns how many destinations were written."""
        shared = templates.Shared()
        written = 0
        for spec in self.due(changed, snapshot_changed):
            try:
                written += self._render_one(spec, data, snapshot, shared)
            except Exception as e:  # whatever it is, it is this template's: the others and the loop go on
                log.debug("template %s failed", spec.name, exc_info=True)
                self.status[spec.name].failed("render_errors", f"{type(e).__name__}: {e}", retrying=False)
                self._used.setdefault(spec.name, frozenset())
                log.error(
                    "template %s: %s: %s (the last good %s stays)",
                    spec.name,
                    type(e).__name__,
                    e,
                    spec.destination,
                )
        return written

    def _render_one(
        self, spec: TemplateSpec, data: Data, snapshot: Snapshot, shared: templates.Shared
    ) -> bool:
        """One template through record.attempt; True when its destination was replaced."""
        status = self.status[spec.name]
        self._stamps[spec.name] = self._file_stamps(spec)
        outcome = attempt(
            status,
            f"template {spec.name}",
            lambda: self._render(spec, data, snapshot, shared),
            lambda text: self._apply(spec, text),
            self._clock,
            keeps=f"the last good {spec.destination} stays",
            logger=log,
        )
        if outcome.failure is not None:
            # Counts as rendered: it is due again when its files, its data or the snapshot change (or
            # its retry is due), not every round: a template broken from the start would fail each second.
            self._used.setdefault(spec.name, frozenset())
        if outcome.how == "written":
            status.writes += 1
            status.last_write = time.time()
            if outcome.failure is None:
                log.info("template %s: wrote %s%s", spec.name, spec.destination, _action(spec))
            return True
        return False

    def _render(
        self, spec: TemplateSpec, data: Data, snapshot: Snapshot, shared: templates.Shared
    ) -> Optional[str]:
        """The template's text from `data`; None while what it asked for is on its way."""
        status = self.status[spec.name]
        try:
            self.sources[spec.name].refresh()
        except render.RenderError as e:
            self._uncompiled.add(spec.name)
            raise OutputFailed("render_errors", f"template: {e}") from None
        self._uncompiled.discard(spec.name)
        try:
            extra: Dict[str, Any] = {}
            for plugin in spec.plugins:
                extra.update(self.plugins.context(plugin, snapshot))
        except PluginError as e:
            raise OutputFailed("plugin_errors", f"plugin: {e}") from None
        result = templates.render_template(
            self.sources[spec.name].template, data, extra, shared, env_allowed=self.settings.template_env
        )
        self._used[spec.name] = result.used
        self._missing[spec.name] = result.missing
        self._given[spec.name] = result.given  # what _apply takes out of its errors (functions.redact)
        status.waiting_for = sorted(str(q) for q in result.missing)
        if result.missing:
            log.debug("template %s: waiting for %s", spec.name, ", ".join(status.waiting_for))
            return None
        status.renders += 1
        if result.error is not None:
            raise OutputFailed("render_errors", f"render: {result.error}")
        return result.text

    def _apply(self, spec: TemplateSpec, text: str) -> str:
        """Check, write and reload (outputs.apply); a reload that failed before is retried on its own."""
        how: Optional[str] = None
        try:
            sensitive = bool(self._given.get(spec.name))  # KV or env() text: 0600 unless `mode` says
            how = outputs.apply(spec, text, self.settings.state_dir, sensitive=sensitive)
            if how == "unchanged" and spec.name in self._reload_pending:
                outputs.reload(spec, self.settings.state_dir)  # the file is in place, its reload was not
                log.info("template %s: reloaded %s (retried)", spec.name, spec.destination)
        except outputs.CheckFailed as e:
            # Its output may quote the file, and so a KV value: taken out (functions.redact).
            why = redact(str(e), self._given.get(spec.name, ()))
            raise OutputFailed("check_failures", f"check rejected the new file: {why}", retry=True) from None
        except outputs.ReloadFailed as e:
            self._reload_pending.add(spec.name)
            why = redact(str(e), self._given.get(spec.name, ()))
            written = how is None  # else the file was in place already: a retry of the reload alone
            every = f"retrying every {RETRY_SECONDS:.0f} s"
            headline = (
                f"{spec.destination} written, but its reload failed ({every}): {why}"
                if written
                else f"reload: {why}"
            )
            raise OutputFailed(
                "reload_failures", f"reload: {why}", headline=headline, retry=True, applied=written
            ) from None
        except outputs.OutputError as e:
            raise OutputFailed("output_errors", str(e), retry=True) from None
        self._reload_pending.discard(spec.name)
        return how


def _action(spec: TemplateSpec) -> str:
    if spec.reload_command:
        return ", ran its reload command"
    if spec.reload_program:
        return f", signalled {spec.reload_program}"
    if spec.restart_program:
        return f", restarted {spec.restart_program}"
    return ""


MAX_PASSES = 20  # render_now: a template whose every pass asks for new data is given up on


def render_now(
    template: Any, extra: Dict[str, Any], settings: Settings, partial: bool = False
) -> templates.Rendered:
    """Render once with data read now: render, read what it lacked, render again (`render`, `check`).

    READ_ERRORS when Consul cannot be read, unless `partial`: then what could not be read stays
    missing and the text is the render with the empty stand-ins (for `check` without a cluster).
    """
    data: Dict[Query, Any] = {}
    for _ in range(MAX_PASSES):
        rendered = templates.render_template(template, data, extra, env_allowed=settings.template_env)
        if not rendered.missing:
            return rendered
        try:
            fetched, warnings = fetch_now(
                settings.consul_http, rendered.missing, settings.watch.include_warning
            )
        except READ_ERRORS:
            if not partial:
                raise
            return templates.render_template(
                template, data, extra, partial=True, env_allowed=settings.template_env
            )
        for text in warnings:
            log.warning("%s", text)
        data.update(fetched)
    return rendered


def check_templates(settings: Settings, snapshot: Snapshot) -> List[str]:
    """`basenode check` for the configured templates: each compiles, its plugins load and give their
    keys, and it renders (from Consul when it answers, else with empty stand-ins). One line per fault."""
    plugins = Plugins(settings.plugins_dir, reserved=templates.FUNCTION_NAMES)
    faults = []
    for spec in settings.templates:
        try:
            template = render.load_template(spec.source)
            extra: Dict[str, Any] = {}
            for plugin in spec.plugins:
                extra.update(plugins.context(plugin, snapshot))
            rendered = render_now(template, extra, settings, partial=True)
        except (render.RenderError, PluginError) as e:
            faults.append(f"template {spec.name}: {e}")
            continue
        if rendered.error is not None:
            faults.append(f"template {spec.name}: {rendered.error}")
    return faults


class TemplateLoop:
    """The templates, and the data HAProxy's own template asks for, over the shared watch.

    Not thread-safe: sync.Loop calls it under the lock that orders every render and apply. A round
    renders, from one copy of the watch's cache (one consistent view of Consul), every template that
    is due; afterwards the watch follows exactly what the last renders used (owner "templates"), and
    a query nobody uses any more is dropped.
    """

    def __init__(self, settings: Settings, watcher: Optional[Watcher] = None) -> None:
        self.settings = settings
        self.templates = TemplateSet(settings)
        self.watcher = watcher
        self.snapshot = static_snapshot(settings)  # until discovery sends one (or for ever)
        self.haproxy_used: FrozenSet[Query] = frozenset()
        self.haproxy_missing: FrozenSet[Query] = frozenset()
        self.haproxy_given: Tuple[Tuple[str, str], ...] = ()

    def round(self, data: Data, changed: Collection[Query] = (), snapshot: Optional[Snapshot] = None) -> int:
        if snapshot is not None:
            self.snapshot = snapshot
        written = self.templates.render_round(
            data, self.snapshot, changed, snapshot_changed=snapshot is not None
        )
        self._want()
        return written

    def render_haproxy(
        self, template: Any, context: Dict[str, Any], data: Data, partial: bool = False
    ) -> Optional[str]:
        """HAProxy's config text with the template functions over `data`; None while their data is on
        its way (unless `partial`: the startup grace is over, stand-ins will do). RenderError as
        render.render."""
        rendered = templates.render_template(
            template, data, context, partial=partial, env_allowed=self.settings.template_env
        )
        self.haproxy_used, self.haproxy_missing = rendered.used, rendered.missing
        self.haproxy_given = rendered.given  # taken out of haproxy -c's messages (functions.redact)
        self._want()
        if rendered.error is not None:
            raise rendered.error
        return rendered.text

    def haproxy_due(self, changed: Collection[Query]) -> bool:
        """HAProxy's template uses (or waits for) one of the queries that changed."""
        return bool(self.haproxy_missing or self.haproxy_used & frozenset(changed))

    def _want(self) -> None:
        if self.watcher is not None:
            self.watcher.want("templates", self.templates.wanted() | self.haproxy_used)

    def tick(self, data: Data) -> None:
        """Called every second or so: renders what a file edit (template, plugin) or missing data made due."""
        if self.templates.due():
            self.round(data)

    def settled(self) -> bool:
        """Every template's first render is done (its file in place, checked, reloaded, or failed)
        and none (HAProxy's included) waits for data."""
        return self.templates.all_rendered() and not self.haproxy_missing

    def waiting(self) -> bool:
        """Some template (HAProxy's included) still waits for data it asked for."""
        return bool(self.haproxy_missing) or any(s.waiting_for for s in self.templates.status.values())

    def once(self, timeout: float) -> bool:
        """`sync --once`: render, read what the renders lacked, render again, until no template waits
        (or `timeout`); True when every template is good."""
        deadline = time.monotonic() + timeout
        data: Dict[Query, Any] = {}
        self.round(data)
        while self.waiting() and time.monotonic() < deadline:
            missing = frozenset().union(*(self.templates.missing(name) for name in self.templates.status))
            try:
                fetched, warnings = fetch_now(
                    self.settings.consul_http, missing, self.settings.watch.include_warning
                )
            except READ_ERRORS as e:
                log.error("templates: cannot read Consul: %s", e)
                return False
            for text in warnings:
                log.warning("%s", text)
            data.update(fetched)
            self.round(data, changed=missing)
        return not self.waiting() and all(s.last_error is None for s in self.templates.status.values())
