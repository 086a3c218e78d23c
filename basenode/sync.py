"""The sync loop: watch -> render -> apply, and the one-shot commands built from the same steps.

Data flows one way: the watch follows every dependency the renders use (HAProxy's routes, HAProxy's
template, every template) and reports which changed; routes.Discovery turns its values into a
validated Snapshot, render turns that into text, haproxy checks and applies it, and the templates
render from the same values. HAProxy's config and every template are outputs taking the same step
(output.record.attempt: render -> check -> apply -> retry) into the same kind of record. Whatever
fails (Consul, the template, HAProxy's check, a full disk), the last good config keeps serving, and
the failure is logged, counted in the output's record (SyncState for HAProxy's) and shown by the
status endpoint (the status package) this process serves. A failed apply (not a failed render or check, which
would fail the same way again) is retried every RETRY_SECONDS until it works.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, FrozenSet, Optional, Tuple

from . import explain, exposure, files, resources
from .config import Settings
from .dependency import READ_ERRORS, Query
from .output import haproxy
from .output.record import RETRY_SECONDS, OutputFailed, attempt
from .routes import ConsulUnavailable, Discovery, fetch_snapshot, static_snapshot
from .snapshot import Snapshot
from .status import server as status_server
from .status.state import SyncState
from .template import render
from .template.functions import redact
from .template.loop import TemplateLoop, check_templates, render_now
from .watch import Watcher

log = logging.getLogger(__name__)
TEMPLATE_POLL_SECONDS = 1.0  # how often a running sync looks for an edited template
READY_POLL_SECONDS = 0.05  # until the first renders are done (programs wait for them to start)
ONCE_TIMEOUT = 30.0  # `sync --once`: how long templates may wait for the data they asked for


class Loop:
    """One sync loop over the shared watch: HAProxy's config and every template, one lock for all.

    `on_change` runs on the watch's consumer thread, `on_template_tick` on the main thread; the lock
    orders every render and apply, and each reads the watch's cache under it (a copy read before a
    slow apply could be older than a render made meanwhile, and would overwrite it).
    """

    def __init__(self, settings: Settings, watcher: Optional[Watcher] = None) -> None:
        self.settings = settings
        self.watcher = watcher
        self.discovery = Discovery(settings)
        self.template = render.TemplateSource(settings.template or render.default_template())
        self.parts = render.RouteParts()  # each route's text, rendered again only when it changed
        # HAProxy's config is one template among the others: same functions, same cache, its own apply.
        self.templates = TemplateLoop(settings, watcher)
        self.state = SyncState()
        self.applied: Optional[Snapshot] = None  # what HAProxy runs
        self.latest: Optional[Snapshot] = None  # newest from the watch (may have failed to apply)
        self.latest_indexes: Dict[Query, int] = {}  # the watch's indexes, read before latest's data
        # Files written while HAProxy did not answer, once it may have been starting (the ready file
        # is out): what it runs is not known until an apply that compares with what runs (baseline.py).
        self.baseline = haproxy.Baseline()
        self.programs_started = False  # the ready file is written: HAProxy may be starting
        self.live_text: Optional[str] = None  # the text last written or applied
        self.lock = threading.Lock()

    def start(self) -> None:
        """Say what HAProxy's routes need before the first change arrives."""
        if self.watcher is not None and self.settings.run_haproxy:
            self.watcher.want("routes", self.discovery.wanted({}))
        with self.lock:
            self.templates.round(self._data())

    def _data(self) -> Dict[Query, Any]:
        return self.watcher.data() if self.watcher is not None else {}

    def on_change(self, changed: FrozenSet[Query]) -> None:
        with self.lock:
            indexes = self.watcher.indexes() if self.watcher is not None else {}
            data = self._data()
            snapshot_changed = False
            if self.settings.run_haproxy and self.watcher is not None:
                self.watcher.want("routes", self.discovery.wanted(data))
                snapshot = self.discovery.snapshot(data, changed)
                self.state.refused_routes = dict(self.discovery.refused)
                if snapshot is not None and snapshot != self.latest:
                    self.latest, snapshot_changed = snapshot, True
                if snapshot is not None:
                    self.latest_indexes = indexes
                if self.latest is not None and (snapshot_changed or self.templates.haproxy_due(changed)):
                    self._apply(self.latest, data, template_changed=not snapshot_changed)
                self._publish_applied()
            self.templates.round(data, changed, self.latest if snapshot_changed else None)

    def _publish_applied(self) -> None:
        """What /explain reports as applied: only once HAProxy runs the newest snapshot, so that an
        index is never claimed before its instances are in HAProxy."""
        if self.applied is not None and self.applied == self.latest:
            self.state.applied = explain.applied(self.applied, self.latest_indexes)

    def ready(self, grace_over: bool) -> bool:
        """What waits for the sync loop may start: HAProxy's config is in place (when it runs), and
        every template had its first render, or the startup grace is over."""
        with self.lock:
            if self.settings.run_haproxy and self.applied is None:
                return False
            return grace_over or self.templates.settled()

    def on_startup_grace_over(self) -> None:
        with self.lock:
            if self.applied is not None:
                return
            log.warning(
                "no answer from Consul at %s after %.0f s: starting with the configured routes and no "
                "instances until it answers",
                self.settings.consul_http.addr,
                self.settings.watch.startup_grace,
            )
            # Its template functions get empty stand-ins for what Consul has not answered.
            self._apply(static_snapshot(self.settings), self._data(), template_changed=False, partial=True)

    def on_template_tick(self) -> None:
        with self.lock:
            data = self._data()
            if self.settings.run_haproxy:
                self._haproxy_tick(data)
            self.templates.tick(data)

    def _haproxy_tick(self, data: Dict[Query, Any]) -> None:
        try:
            changed = self.template.refresh()
        except render.RenderError as e:
            message = f"render: {e}"
            if self.state.last_error != message:  # this is looked at every second: count it once
                self.state.failed("render_errors", message, retrying=False)
                log.error("template: %s (the running config stays)", e)
            return
        if changed and self.latest is not None and self.applied is not None:
            log.info("template %s changed: re-rendering", self.template.path)
            self._apply(self.latest, data, template_changed=True)
        elif self.state.due(time.monotonic()) and self.latest is not None:
            log.info("retrying the apply that failed")
            self._apply(self.latest, data, template_changed=True)
        elif self.baseline.unconfirmed and self.latest is not None and haproxy.running(self.settings, 0.0):
            self._apply(self.latest, data, template_changed=True)

    def _apply(
        self, snapshot: Snapshot, data: Dict[Query, Any], template_changed: bool, partial: bool = False
    ) -> None:
        """HAProxy's config as one output through record.attempt, like every template."""
        started = time.monotonic()
        previous = None if template_changed else self.applied

        def render_config() -> Optional[str]:
            try:
                if self.template.template is None:
                    self.template.refresh()
                context = render.context(snapshot, self.settings, self.parts)
                # None while what its template functions asked for is being read: a change comes next
                return self.templates.render_haproxy(self.template.template, context, data, partial)
            except render.RenderError as e:
                raise OutputFailed("render_errors", f"render: {e}") from None

        def apply_config(text: str) -> str:
            try:
                baseline = self.baseline.mode(text)
                how = haproxy.apply(self.settings, previous, snapshot, text, baseline=baseline).how
                self._followed(how, baseline, text)
                return how
            except haproxy.CheckFailed as e:
                why = redact(str(e), self.templates.haproxy_given)  # it may quote a line with a KV value
                raise OutputFailed(
                    "check_failures",
                    f"check: haproxy -c: {why}",
                    headline=f"haproxy -c rejected the new config: {why}",
                ) from None
            except (haproxy.ApplyError, OSError) as e:
                # Not the config's fault (a full disk, HAProxy between lives): the same one may work soon.
                raise OutputFailed(
                    "apply_errors",
                    f"apply: {e}",
                    headline=f"apply failed, retrying every {RETRY_SECONDS:.0f} s: {e}",
                    retry=True,
                ) from None

        outcome = attempt(
            self.state, "sync", render_config, apply_config, time.monotonic, "the running config stays", log
        )
        if outcome.how is None:
            return
        self.applied = snapshot
        self._record(snapshot, outcome.how, time.monotonic() - started)
        self._publish_applied()
        resources.return_free_memory()

    def _followed(self, how: str, baseline: str, text: str) -> None:
        """What an apply of `text` tells of what HAProxy runs (baseline.py)."""
        if how == "written" and self.programs_started:
            self.baseline.written(self.live_text, text)
        elif how in ("reload", "restart") or (how != "written" and baseline == haproxy.SERVERS):
            self.baseline.confirmed()
        self.live_text = text

    def _record(self, snapshot: Snapshot, how: str, duration: float) -> None:
        s = self.state
        s.syncs += 1
        s.last_sync = time.time()
        s.last_duration = duration
        s.last_how = how
        if how in s.applies:
            s.applies[how] += 1
        s.observe(duration)
        s.running = snapshot
        if how != "unchanged" and log.isEnabledFor(logging.DEBUG):  # haproxy.apply logged how
            log.debug(
                "applied via %s in %.1f ms: %s",
                how,
                duration * 1000,
                ", ".join(f"{r.route.service}={len(r.instances)}" for r in snapshot.routes) or "no routes",
            )


def run(settings: Settings, once: bool = False) -> int:
    """`basenode sync [--once]`: until SIGTERM/SIGINT, or one pass with --once."""
    if settings.run_haproxy:
        try:
            render.TemplateSource(settings.template or render.default_template()).refresh()
        except render.RenderError as e:
            print(f"basenode: {e}", file=sys.stderr)
            return 2
    if once:
        return _run_once(settings)

    resources.raise_open_files_limit()
    stop = threading.Event()
    look_now = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        stop.set()
        look_now.set()

    def request_template_check(signum: int, _frame: Any) -> None:
        look_now.set()  # SIGHUP (basenode run got one): look at the template now, not within a second

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    signal.signal(signal.SIGHUP, request_template_check)
    watcher = Watcher(settings)
    loop = Loop(settings, watcher)
    loop.state.templates = loop.templates.templates.status
    server = status_server.serve(settings, loop.state, watcher)
    exposure.warn_when_known(settings, stop)  # one line at start when the cluster is open to anyone
    loop.start()
    consumer = threading.Thread(target=watcher.run, args=(loop.on_change, stop), name="sync", daemon=True)
    consumer.start()
    grace_over = time.monotonic() + settings.watch.startup_grace
    next_look = time.monotonic() + TEMPLATE_POLL_SECONDS
    ready, ready_error = False, None
    while not stop.is_set():
        # Until ready, wake often to see the first renders done; look at the files once a second.
        asked = look_now.wait(TEMPLATE_POLL_SECONDS if ready else READY_POLL_SECONDS)
        look_now.clear()
        if stop.is_set():
            break
        now = time.monotonic()
        if asked or now >= next_look:
            next_look = now + TEMPLATE_POLL_SECONDS
            loop.on_template_tick()
            if settings.run_haproxy and loop.applied is None and now > grace_over:
                loop.on_startup_grace_over()
        if not ready and loop.ready(grace_over=now > grace_over):
            error = _mark_ready(settings.sync_ready_file)
            loop.programs_started = error is None
            if error is not None and error != ready_error:
                log.error("%s", error)  # once: it is tried again every tick
            ready, ready_error = error is None, error
        if not consumer.is_alive():
            log.error("the sync thread ended unexpectedly")
            return 1
    if server is not None:
        server.server_close()
    consumer.join(timeout=2.0)
    watcher.close()
    return 0


def _run_once(settings: Settings) -> int:
    """`sync --once`: HAProxy's config and every template from Consul read now, applied once."""
    loop = Loop(settings)
    if settings.run_haproxy:
        snapshot, text, status_code = _render_live(settings)
        if snapshot is None:
            return status_code
        try:
            haproxy.apply(settings, None, snapshot, text)
        except (haproxy.CheckFailed, haproxy.ApplyError, OSError) as e:
            print(f"basenode: haproxy: {e}", file=sys.stderr)
            return 1
        loop.templates.snapshot = snapshot
    good = loop.templates.once(timeout=ONCE_TIMEOUT)
    return 0 if good else 1


def _render_live(settings: Settings) -> Tuple[Optional[Snapshot], str, int]:
    """HAProxy's config rendered from the live catalog: (snapshot, text, 0), or (None, "", exit status)
    with the reason printed (1: Consul could not be read, 2: the template failed)."""
    try:
        template = render.load_template(settings.template or render.default_template(), single_line=True)
        snapshot = fetch_snapshot(settings)
        rendered = render_now(template, render.context(snapshot, settings), settings)
        if rendered.error is not None:
            raise rendered.error
    except render.RenderError as e:
        print(f"basenode: {e}", file=sys.stderr)
        return None, "", 2
    except ConsulUnavailable as e:
        print(f"basenode: consul: {e}", file=sys.stderr)
        return None, "", 1
    except READ_ERRORS as e:
        print(f"basenode: consul: {type(e).__name__}: {e}", file=sys.stderr)
        return None, "", 1
    return snapshot, rendered.text or "", 0


def _mark_ready(path: Path) -> Optional[str]:
    """Write the ready file that `depends_on = ["sync"]` waits for (HAProxy, the application, programs
    a template reloads), so that they start on files this run rendered; the error if it cannot be."""
    try:
        files.write_atomic(path, f"{os.getpid()}\n")
    except OSError as e:
        return f"cannot write {path} (programs that wait for the first renders wait on): {e}"
    log.debug("first renders done: %s written", path)
    return None


def render_once(settings: Settings, out: str = "-") -> int:
    """`basenode render`: the config the live catalog gives, applying nothing."""
    snapshot, text, status_code = _render_live(settings)
    if snapshot is None:
        return status_code
    if out == "-":
        sys.stdout.write(text)
    else:
        files.write_atomic(Path(out), text, mode=0o644)
    return 0


def check(settings: Settings) -> int:
    """`basenode check`: the config (already loaded), the template, and `haproxy -c` on its output.

    Rendered from the live catalog when Consul answers, else from the configured routes with no
    instances, so that a check works on a build machine without a cluster.
    """
    path = settings.template or render.default_template()
    try:
        template = render.load_template(path, single_line=True)
        try:
            snapshot = fetch_snapshot(settings, timeout=2.0)
            source = "live catalog"
        except ConsulUnavailable:
            snapshot = static_snapshot(settings)
            source = "configured routes, no instances (Consul not reachable)"
        rendered = render_now(template, render.context(snapshot, settings), settings, partial=True)
        if rendered.error is not None:
            raise rendered.error
        text = rendered.text or ""
    except render.RenderError as e:
        print(f"basenode: {e}", file=sys.stderr)
        return 2
    faults = check_templates(settings, snapshot)
    for fault in faults:
        print(f"basenode: {fault}", file=sys.stderr)
    if faults:
        return 2
    if settings.run_haproxy:
        candidate = settings.state_dir / "haproxy.cfg.check"
        try:
            settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            files.write_atomic(candidate, text)
            haproxy.check(settings.haproxy_bin, candidate)
        except haproxy.CheckFailed as e:
            print(f"basenode: haproxy -c rejected the rendered config: {e}", file=sys.stderr)
            return 2
        finally:
            with contextlib.suppress(OSError):
                os.unlink(candidate)
    names = "".join(f", template {t.name}" for t in settings.templates)
    print(f"ok: config, template {path} ({source}), haproxy -c{names}")
    return 0
