"""The sync loop: watch -> render -> apply, and the one-shot commands built from the same steps.

Data flows one way: watch emits validated Snapshots, render turns one into text, haproxy checks
and applies the text. Whatever fails (Consul, the template, HAProxy's check, a full disk), the last
good config keeps serving, and the failure is logged, counted in the loop's SyncState and shown by
the status endpoint (status.py) this process serves. A failed apply (not a failed render or check,
which would fail the same way again) is retried every RETRY_SECONDS until it works.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from . import consul, files, haproxy, render, status, watch
from .config import Settings
from .snapshot import Snapshot
from .templateset import TemplateLoop, check_templates, render_now

log = logging.getLogger(__name__)
TEMPLATE_POLL_SECONDS = 1.0  # how often a running sync looks for an edited template
READY_POLL_SECONDS = 0.05  # until the first renders are done (programs wait for them to start)
RETRY_SECONDS = 2.0  # after a failed apply (disk full, HAProxy not answering), try again this often
ONCE_TIMEOUT = 30.0  # `sync --once`: how long templates may wait for the data they asked for


class Loop:
    """One sync loop; `on_snapshot` runs on the watch thread, template checks on the main thread."""

    def __init__(self, settings: Settings, templates: Optional[TemplateLoop] = None) -> None:
        self.settings = settings
        self.template = render.TemplateSource(settings.template or render.default_template())
        # HAProxy's config is one template among the others: same functions, same dependency cache,
        # its own apply path. A change of what its template asked for re-renders it (on_dependencies).
        self.templates = templates or TemplateLoop(settings)
        self.templates.on_haproxy = self.on_dependencies
        self.state = status.SyncState()
        self.applied: Optional[Snapshot] = None  # what HAProxy runs
        self.latest: Optional[Snapshot] = None  # newest from watch (may have failed to apply)
        self.retry_at: Optional[float] = None  # monotonic time to apply `latest` again after a failure
        self.lock = threading.Lock()  # one apply at a time: watch thread vs template refresh

    def on_snapshot(self, snapshot: Snapshot) -> None:
        # Each apply reads the dependency cache under the lock that orders it (HAProxy's here, the
        # templates' in round): a copy read before the slow HAProxy apply could be older than a render
        # the dependency thread makes meanwhile, and would overwrite it.
        with self.lock:
            self.latest = snapshot
            self._apply(snapshot, template_changed=False)
        self.templates.round(snapshot=snapshot)

    def on_dependencies(self) -> None:
        with self.lock:
            if self.latest is not None:
                self._apply(self.latest, template_changed=True)

    def ready(self, grace_over: bool) -> bool:
        """What waits for the sync loop may start: HAProxy's config is in place (when it runs), and
        every template had its first render, or the startup grace is over."""
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
            self._apply(watch.static_snapshot(self.settings), template_changed=False, partial=True)

    def on_template_tick(self) -> None:
        with self.lock:
            try:
                changed = self.template.refresh()
            except render.RenderError as e:
                message = f"render: {e}"
                if self.state.last_error != message:
                    log.error("template: %s (the running config stays)", e)
                    self.state.render_errors += 1
                    self.state.last_error = message
                return
            if changed and self.latest is not None and self.applied is not None:
                log.info("template %s changed: re-rendering", self.template.path)
                self._apply(self.latest, template_changed=True)
            elif self.retry_at is not None and time.monotonic() >= self.retry_at and self.latest is not None:
                log.info("retrying the apply that failed")
                self._apply(self.latest, template_changed=True)

    def _apply(self, snapshot: Snapshot, template_changed: bool, partial: bool = False) -> None:
        started = time.monotonic()
        try:
            if self.template.template is None:
                self.template.refresh()
            context = render.context(snapshot, self.settings)
            text = self.templates.render_haproxy(self.template.template, context, partial)
        except render.RenderError as e:
            log.error("render: %s (the running config stays)", e)
            self.state.render_errors += 1
            self.state.last_error = f"render: {e}"
            return
        if text is None:
            return  # what its template functions asked for is being read: on_dependencies comes next
        previous = None if template_changed else self.applied
        try:
            result = haproxy.apply(self.settings, previous, snapshot, text)
        except haproxy.CheckFailed as e:
            log.error("haproxy -c rejected the new config (the running config stays): %s", e)
            self.state.check_failures += 1
            self.state.last_error = f"check: haproxy -c: {e}"
            return
        except (haproxy.ApplyError, OSError) as e:
            # Not the config's fault (a full disk, HAProxy between lives): the same one may work soon.
            message = f"apply: {e}"
            if message != self.state.last_error:  # once per distinct error, not every retry
                log.error("apply failed, retrying every %.0f s: %s", RETRY_SECONDS, e)
            else:
                log.debug("apply failed again: %s", e)
            self.state.apply_errors += 1
            self.state.last_error = message
            self.retry_at = time.monotonic() + RETRY_SECONDS
            return
        self.retry_at = None
        self.applied = snapshot
        self._record(snapshot, result.how, time.monotonic() - started)
        _return_free_memory()

    def _record(self, snapshot: Snapshot, how: str, duration: float) -> None:
        s = self.state
        s.syncs += 1
        s.last_sync = time.time()
        s.last_duration = duration
        s.last_how = how
        if s.last_error:
            log.info("sync works again after: %s", s.last_error)
        s.last_error = None
        if how in s.applies:
            s.applies[how] += 1
        s.observe(duration)
        s.routes = tuple(
            (r.route.service, r.route.port, r.route.mode, len(r.instances)) for r in snapshot.routes
        )
        if how != "unchanged":  # haproxy.apply logged how; this adds the routes' sizes
            log.debug(
                "applied via %s in %.1f ms: %s",
                how,
                duration * 1000,
                ", ".join(f"{r.route.service}={len(r.instances)}" for r in snapshot.routes) or "no routes",
            )


def _return_free_memory() -> None:
    """Give the heap's free pages back to the system after an apply.

    Rendering and parsing a large config churns through megabytes of short-lived strings; glibc
    keeps the freed pages, so a sync process that once rendered 1,000 routes would hold that peak
    for ever. malloc_trim is glibc's; elsewhere this does nothing.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Optional[Callable[[int], int]]:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def run(settings: Settings, once: bool = False) -> int:
    """`basenode sync [--once]`: until SIGTERM/SIGINT, or one pass with --once."""
    loop = Loop(settings)
    templates = loop.templates
    if settings.run_haproxy:
        try:
            loop.template.refresh()
        except render.RenderError as e:
            print(f"basenode: {e}", file=sys.stderr)
            return 2
    if once:
        if settings.run_haproxy:
            try:
                snapshot = watch.fetch_snapshot(settings)
            except watch.ConsulUnavailable as e:
                print(f"basenode: consul: {e}", file=sys.stderr)
                return 1
            loop.on_snapshot(snapshot)
        good = templates.once(timeout=ONCE_TIMEOUT)
        return 0 if good and loop.state.last_error is None else 1

    _raise_open_files_limit()
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
    watcher = watch.Watcher(settings) if settings.run_haproxy else None
    loop.state.templates = templates.templates.status
    loop.state.dependency_sources = templates.deps.sources
    server = status.serve(settings, loop.state, watcher)
    threads = [threading.Thread(target=templates.run, args=(stop,), name="templates", daemon=True)]
    if watcher is not None:
        threads.append(
            threading.Thread(target=watcher.run, args=(loop.on_snapshot, stop), name="watch", daemon=True)
        )
    for thread in threads:
        thread.start()
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
            if watcher is not None:
                loop.on_template_tick()
                if loop.applied is None and now > grace_over:
                    loop.on_startup_grace_over()
            templates.tick()
        if not ready and loop.ready(grace_over=now > grace_over):
            error = _mark_ready(settings.sync_ready_file)
            if error is not None and error != ready_error:
                log.error("%s", error)  # once: it is tried again every tick
            ready, ready_error = error is None, error
        if not all(thread.is_alive() for thread in threads):
            log.error("%s thread ended unexpectedly", ", ".join(t.name for t in threads if not t.is_alive()))
            return 1
    if server is not None:
        server.server_close()
    for thread in threads:
        thread.join(timeout=2.0)
    return 0


def _mark_ready(path: Path) -> Optional[str]:
    """Write the ready file that `depends_on = ["sync"]` waits for (HAProxy, the application, programs
    a template reloads), so that they start on files this run rendered; the error if it cannot be."""
    try:
        files.write_atomic(path, f"{os.getpid()}\n")
    except OSError as e:
        return f"cannot write {path} (programs that wait for the first renders wait on): {e}"
    log.debug("first renders done: %s written", path)
    return None


def _raise_open_files_limit() -> None:
    """Soft limit on open files up to the hard one: each template dependency holds a connection."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def render_once(settings: Settings, out: str = "-") -> int:
    """`basenode render`: the config the live catalog gives, applying nothing."""
    try:
        template = render.load_template(settings.template or render.default_template(), single_line=True)
        snapshot = watch.fetch_snapshot(settings)
        rendered = render_now(template, render.context(snapshot, settings), settings)
        if rendered.error is not None:
            raise rendered.error
        text = rendered.text or ""
    except render.RenderError as e:
        print(f"basenode: {e}", file=sys.stderr)
        return 2
    except watch.ConsulUnavailable as e:
        print(f"basenode: consul: {e}", file=sys.stderr)
        return 1
    except consul.ERRORS as e:
        print(f"basenode: consul: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if out == "-":
        sys.stdout.write(text)
    else:
        haproxy.write_atomic(Path(out), text, mode=0o644)
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
            snapshot = watch.fetch_snapshot(settings, timeout=2.0)
            source = "live catalog"
        except watch.ConsulUnavailable:
            snapshot = watch.static_snapshot(settings)
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
            haproxy.write_atomic(candidate, text)
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
