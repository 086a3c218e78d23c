"""Consul -> a stream of validated, immutable Snapshots.

Routes (which services get a local port) come from Settings.routes (flags, environment, config file)
merged with Consul KV under `basenode/routes/<service>`. A KV value is `PORT[/MODE][ tag=TAG]`:
`9302`, `9302/http`, `9302/http tag=primary` (only instances carrying the tag are routed). A bad KV
value is skipped with one warning naming the key and the value; a KV route whose service or port a
static route already uses is skipped too: static routes win, because they were chosen for this
container, the KV tree for the whole cluster.

Shape of the watch, measured against Consul 1.8.7 on 2 cores (numbers: docs/benchmarks.md). In
"blocking" mode two long polls run, whatever the number of routes, in two threads:
- the catalog (CatalogReader): a blocking read of the per-service summaries, whose index moves on any
  node, service or check change; only the services whose summary changed are read again; a full dump
  when the summaries cannot tell, and a few seconds after targeted reads to catch a change they hid;
- the KV routes prefix.
Idle, that is 2 requests per `wait` (5 min) in all: 0.4/min for 100 or 1,000 routes. A long poll per
routed service wakes only for its own service, but costs one request per route per wait (20/min idle
for 100 routes), a thread and a connection each, and a Consul 1.8 agent refuses more than 200
connections from one address (limits.http_max_conns_per_client): at 1,000 routes 800 of the polls
fail. Consul 1.8 has no read that lists which services changed since an index (a check's ModifyIndex
does not move when its service is re-registered at a new address; filters cannot compare numbers),
hence summaries + targeted reads + a dump as the safety net.

Consul's blocking-query rules, as its documentation gives them: the index is reset to 0 when it goes
backwards, and never sent as 0 after a response (at least 1); after a failed read the next read is a
plain one (index 0), since a restarted agent may be behind the old index and would hold the read;
`wait` gets jitter (we ask for up to wait/16 less, Consul adds up to wait/16 more); a read that comes
back at once with an unmoved index is rate-limited; errors back off exponentially with full jitter.
A failed read is "unknown", never "no instances": the last good state stays until a read succeeds.

Debounce works on the leading edge: an isolated change is emitted at once; changes that follow within
wait_min are coalesced into one further emission, which waits for wait_min of quiet but never longer
than wait_max after the first of them. A snapshot equal to the last one emitted is not emitted again.

"poll" mode is the seed's behaviour, for benchmarks: plain reads (KV, then each routed service's health)
every poll_interval seconds, no blocking, no debounce beyond the interval itself.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from . import consul
from .config import ROUTES_KV_PREFIX, SERVICE_NAME_RE, ConfigError, Route, Settings, parse_route
from .snapshot import SAFE_TOKEN_RE, RouteState, Snapshot, instances_from_health

log = logging.getLogger(__name__)

KV_SOURCE = "consul kv"
BACKOFF_INITIAL = 0.25  # seconds; doubles per failed read in a row, full jitter
BACKOFF_MAX = 10.0
QUICK_RETURN = 1.0  # a blocking read back sooner than this with the same index is Consul misbehaving

Entries = Dict[str, List[Mapping[str, Any]]]  # service name -> health entries ({Node, Service, Checks})


class WatchError(Exception):
    """Consul could not be read; str() says what failed (never the token)."""


class ConsulUnavailable(WatchError):
    """The agent did not answer, or answered with an error."""


# --- routes ---------------------------------------------------------------------------------------


def parse_kv_route(key: str, value: Optional[str], prefix: str = ROUTES_KV_PREFIX) -> Route:
    """`basenode/routes/web` = `9302/http tag=primary` -> Route. Raises ConfigError naming key and value."""
    source = f"{KV_SOURCE} {key}"
    service = key[len(prefix) :] if key.startswith(prefix) else key
    if value is None:
        raise ConfigError(source, "", "value is empty or not UTF-8")
    if not SERVICE_NAME_RE.match(service):
        raise ConfigError(source, "", f"service name must match [A-Za-z0-9._-]{{1,128}}, got {service!r}")
    words = value.split()
    if not words:
        raise ConfigError(source, service, f"expected PORT[/MODE][ tag=TAG], got {value!r}")
    route = parse_route(f"{service}:{words[0]}", source)
    tag = None
    for word in words[1:]:
        name, sep, tag_value = word.partition("=")
        if name != "tag" or not sep or not SAFE_TOKEN_RE.match(tag_value):
            raise ConfigError(source, service, f"expected PORT[/MODE][ tag=TAG], got {value!r}")
        tag = tag_value
    return Route(service=route.service, port=route.port, mode=route.mode, tag=tag, source=source)


def merge_routes(
    static: Sequence[Route], kv_values: Mapping[str, Optional[str]], prefix: str = ROUTES_KV_PREFIX
) -> Tuple[Tuple[Route, ...], List[str]]:
    """Static routes plus the valid KV routes that clash with none of them (and none before them, by key).

    Returns the routes sorted by service and one warning per KV entry skipped.
    """
    routes: Dict[str, Route] = {r.service: r for r in static}
    ports: Dict[int, Route] = {r.port: r for r in static}
    warnings: List[str] = []
    for key in sorted(kv_values):
        if key == prefix or (key.endswith("/") and kv_values[key] is None):
            continue  # a folder, not a route
        try:
            route = parse_kv_route(key, kv_values[key], prefix)
        except ConfigError as e:
            warnings.append(f"skipped route: {e}")
            continue
        clash = routes.get(route.service) or ports.get(route.port)
        if clash is not None:
            what = "service" if clash.service == route.service else f"port {route.port}"
            warnings.append(
                f"skipped route: {route.source}: {what} already routed by {clash.source or 'settings'}"
                f" ({clash.service}:{clash.port})"
            )
            continue
        routes[route.service] = route
        ports[route.port] = route
    return tuple(sorted(routes.values(), key=lambda r: r.service)), warnings


# --- snapshots ------------------------------------------------------------------------------------


def route_state(
    route: Route, entries: Sequence[Mapping[str, Any]], include_warning: bool = False
) -> Tuple[RouteState, List[str]]:
    """One route's healthy, validated instances, and one warning per dropped instance."""
    healthy = [e for e in entries if consul.healthy(e.get("Checks"), include_warning)]
    instances, dropped = instances_from_health(route.service, healthy, route.tag)
    return RouteState(route=route, instances=instances), dropped


def build_snapshot(
    routes: Iterable[Route], entries: Mapping[str, Sequence[Mapping[str, Any]]], include_warning: bool = False
) -> Tuple[Snapshot, List[str]]:
    """Routes + health entries -> Snapshot (healthy, validated instances) and a warning per dropped instance.

    A route whose service has no entry gets a RouteState with no instances: its frontend still exists.
    """
    return SnapshotBuilder().build(routes, entries, include_warning)


class SnapshotBuilder:
    """build_snapshot with a memory: a route whose entries did not change is not validated again.

    With 1,000 routes of 5 instances, validating everything on every change costs tens of milliseconds;
    comparing each service's entries with the last ones costs a few.
    """

    def __init__(self) -> None:
        self._cache: Dict[Route, Tuple[bool, Sequence[Mapping[str, Any]], RouteState, List[str]]] = {}

    def build(
        self,
        routes: Iterable[Route],
        entries: Mapping[str, Sequence[Mapping[str, Any]]],
        include_warning: bool = False,
    ) -> Tuple[Snapshot, List[str]]:
        cache: Dict[Route, Tuple[bool, Sequence[Mapping[str, Any]], RouteState, List[str]]] = {}
        states = []
        warnings: List[str] = []
        for route in sorted(routes, key=lambda r: r.service):
            service_entries = entries.get(route.service, ())
            cached = self._cache.get(route)
            if cached is not None and cached[0] == include_warning and cached[1] == service_entries:
                state, dropped = cached[2], cached[3]
            else:
                state, dropped = route_state(route, service_entries, include_warning)
            cache[route] = (include_warning, service_entries, state, dropped)
            states.append(state)
            warnings.extend(dropped)
        self._cache = cache
        return Snapshot(routes=tuple(states)), warnings


class WarnOnce:
    """Logs each distinct warning once while it persists; one that goes away and comes back is logged anew."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self._active: Set[str] = set()
        self._log = logger

    def report(self, warnings: Iterable[str]) -> None:
        current = set(warnings)
        for text in sorted(current - self._active):
            self._log.warning("%s", text)
        self._active = current


# --- debounce -------------------------------------------------------------------------------------


class Debouncer:
    """Leading-edge debounce, pure logic on a clock the caller passes in.

    change(now) -> True: emit now (an isolated change). Otherwise the change is pending, and
    deadline() says when to emit it; call emitted(now) after each emission.
    """

    def __init__(self, wait_min: float, wait_max: float) -> None:
        self.wait_min = wait_min
        self.wait_max = max(wait_max, wait_min)
        self._last_emit: Optional[float] = None
        self._first_pending: Optional[float] = None
        self._last_change: Optional[float] = None

    def change(self, now: float) -> bool:
        if self._first_pending is None and (
            self._last_emit is None or now - self._last_emit >= self.wait_min
        ):
            return True
        if self._first_pending is None:
            self._first_pending = now
        self._last_change = now
        return False

    def deadline(self) -> Optional[float]:
        if self._first_pending is None or self._last_change is None:
            return None
        return min(self._last_change + self.wait_min, self._first_pending + self.wait_max)

    def due(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def emitted(self, now: float) -> None:
        self._last_emit = now
        self._first_pending = None
        self._last_change = None


# --- the catalog as one blocking query -------------------------------------------------------------

RECONCILE_AFTER = 5.0  # seconds after a targeted update until the full read that catches hidden changes
MAX_TARGETED = 16  # more changed services than this in one wake: one full read is cheaper


class CatalogReader:
    """The catalog behind one blocking query, read as cheaply as Consul 1.8 allows.

    It blocks on the per-service summaries (/v1/internal/ui/services), whose index moves on any catalog
    change. A service whose summary changed is read alone (/v1/health/service/<name>). When no summary
    changed (the change is one the counts cannot show: an instance re-registered at a new address, two
    checks flipping opposite ways at once), or too many did, or on the first read, everything is read
    in one dump (/v1/internal/ui/nodes). A hidden change can ride along with a visible one in the same
    wake, so RECONCILE_AFTER seconds after targeted reads one full read makes sure: state is exact at
    once for every change the summary shows, and within seconds for any other.

    `read(index, wait)` fits Watcher._blocking_loop; the callables are consul.py's reads (or fakes).
    """

    def __init__(
        self,
        read_summary: Callable[[int, Optional[str]], Tuple[int, Mapping[str, Any]]],
        read_dump: Callable[[], Entries],
        read_service: Callable[[str], List[Mapping[str, Any]]],
        clock: Callable[[], float] = time.monotonic,
        reconcile_after: float = RECONCILE_AFTER,
        max_targeted: int = MAX_TARGETED,
    ) -> None:
        self.read_summary = read_summary
        self.read_dump = read_dump
        self.read_service = read_service
        self.clock = clock
        self.reconcile_after = reconcile_after
        self.max_targeted = max_targeted
        self.summary: Optional[Mapping[str, Any]] = None
        self.entries: Optional[Entries] = None
        self.reconcile_at: Optional[float] = None
        self.full_reads = 0
        self.targeted_reads = 0

    def read(self, index: int, wait: Optional[str]) -> Tuple[int, Entries]:
        if self.entries is None or self.summary is None or not index:
            return self._full(*self.read_summary(0, None))
        if self.reconcile_at is not None:
            remaining = self.reconcile_at - self.clock()
            if remaining <= 0:
                return self._full(*self.read_summary(0, None))
            if wait:
                wait = consul.format_wait(min(consul.parse_wait(wait), remaining))
        new_index, summary = self.read_summary(index, wait)
        if new_index == index:
            return new_index, self.entries  # the wait ran out: nothing moved
        old = self.summary
        changed = sorted(name for name in {*old, *summary} if old.get(name) != summary.get(name))
        if not changed or len(changed) > self.max_targeted or new_index < index:
            return self._full(new_index, summary)
        entries = dict(self.entries)
        for name in changed:
            service_entries = self.read_service(name)
            self.targeted_reads += 1
            if service_entries:
                entries[name] = service_entries
            else:
                entries.pop(name, None)
        self.summary, self.entries = summary, entries
        if self.reconcile_at is None:
            self.reconcile_at = self.clock() + self.reconcile_after
        return new_index, entries

    def _full(self, index: int, summary: Mapping[str, Any]) -> Tuple[int, Entries]:
        # Summary first, dump second: the dump is at least as new as the index we block on next, so a
        # change between the two reads is seen twice (harmless), never missed.
        entries = self.read_dump()
        self.full_reads += 1
        self.summary, self.entries, self.reconcile_at = summary, entries, None
        return index, entries


# --- the watcher ----------------------------------------------------------------------------------


def backoff_delay(failures: int, rng: random.Random) -> float:
    """Full jitter: uniform in (0, min(max, initial * 2^(failures-1))]."""
    ceiling = min(BACKOFF_MAX, BACKOFF_INITIAL * (2 ** min(max(failures - 1, 0), 16)))
    return ceiling * (1.0 - rng.random())


@dataclass
class SourceStatus:
    """What one read loop knows, for status output and tests."""

    name: str
    index: int = 0
    failures: int = 0  # in a row; 0 once a read works again
    last_error: str = ""
    reads: int = 0
    errors: int = 0  # failed reads since start
    last_ok: Optional[float] = None  # wall-clock time of the last read that worked


@dataclass(frozen=True)
class Pacing:
    """How a blocking read loop waits: Consul's `wait`, the randomness for jitter, the clock."""

    wait_seconds: float
    rng: random.Random
    clock: Callable[[], float] = time.monotonic

    def jittered_wait(self) -> str:
        # Consul adds up to wait/16 itself; asking for up to wait/16 less spreads clients started together.
        return consul.format_wait(self.wait_seconds * (1.0 - self.rng.random() / 16))


def read_failed(
    status: SourceStatus, error: BaseException, stop: threading.Event, rng: random.Random
) -> None:
    """Count and log a failed read (once per run of failures), then back off with full jitter."""
    status.failures += 1
    status.errors += 1
    status.last_error = f"{type(error).__name__}: {error}"[:300]
    if status.failures == 1:
        log.warning("consul %s read failed, keeping the last good state: %s", status.name, status.last_error)
    else:
        log.debug("consul %s read failed (%d in a row): %s", status.name, status.failures, status.last_error)
    stop.wait(backoff_delay(status.failures, rng))


def read_recovered(status: SourceStatus) -> None:
    if status.failures:
        log.info("consul %s read works again after %d failed reads", status.name, status.failures)
    status.failures = 0
    status.last_error = ""
    status.last_ok = time.time()


def blocking_loop(
    read: Callable[[int, Optional[str]], Tuple[int, Any]],
    store: Callable[[Any], bool],
    on_change: Callable[[], None],
    stop: threading.Event,
    status: SourceStatus,
    pacing: Pacing,
) -> None:
    """One blocking query, repeated until `stop` is set, by Consul's rules (see the module docstring).

    `read(index, wait)` returns (new index, data); `store(data)` keeps it and says whether it changed,
    and then `on_change()` is called. A read that returns after `stop` was set is dropped unstored.
    """
    name = status.name
    index = 0
    while not stop.is_set():
        started = pacing.clock()
        try:
            new_index, data = read(index, pacing.jittered_wait() if index else None)
        except Exception as e:
            if not isinstance(e, consul.ERRORS):  # a bug must not silently freeze routing: log, retry
                log.exception("consul %s read: unexpected error", name)
            read_failed(status, e, stop, pacing.rng)
            # The agent may have restarted with a lower index: a blocking read on the old one would
            # wait out the whole `wait` before anything is seen, so the next read is a plain one.
            index = 0
            continue
        if stop.is_set():
            return
        status.reads += 1
        read_recovered(status)
        if store(data):
            on_change()
        new_index = max(new_index, 1)  # Consul's rule: 0 is never a valid index to block on
        if new_index < index:
            # Consul's rule: an index that goes backwards (a restored or restarted cluster) starts over.
            log.debug("consul %s index went back from %d to %d: reset", name, index, new_index)
            index = 0
        elif index and new_index == index and pacing.clock() - started < QUICK_RETURN:
            # Unmoved index, yet no wait: do not spin; treat it like a failed read for pacing.
            stop.wait(backoff_delay(1, pacing.rng))
            index = new_index
        else:
            index = new_index
        status.index = index


class Watcher:
    """Turns Consul into Snapshots. One Watcher, one run() at a time.

    run(on_snapshot, stop) calls on_snapshot(snapshot) from the calling thread for the first snapshot (once
    both the catalog and the KV routes have been read) and for every different one after it, until `stop`
    is set. It returns soon after `stop` is set; the read threads are daemons and end at their next wake.
    """

    def __init__(
        self,
        settings: Settings,
        client: Optional[consul.Client] = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Optional[random.Random] = None,
    ) -> None:
        self.settings = settings
        self.watch = settings.watch
        self.wait_seconds = consul.parse_wait(self.watch.blocking_wait)
        self.client = client or consul.make_client(settings.consul_http)
        # Each long poll gets its own client: a requests Session is not meant to be shared by threads.
        self.kv_client = client or consul.make_client(settings.consul_http)
        self.clock = clock
        self.rng = rng or random.Random()
        self.last_snapshot: Optional[Snapshot] = None
        self.sources: Dict[str, SourceStatus] = {}
        self._cond = threading.Condition()
        self._changes = 0
        self._entries: Optional[Entries] = None  # None: never read (unknown)
        self._kv: Optional[Dict[str, Optional[str]]] = None
        self._route_warnings = WarnOnce()
        self._instance_warnings = WarnOnce()
        self._builder = SnapshotBuilder()
        self.catalog = self._catalog_reader()

    # -- public ----------------------------------------------------------------------------------

    @property
    def requests(self) -> int:
        """Requests sent to Consul so far by this watcher."""
        clients = {id(c): c for c in (self.client, self.kv_client)}
        return sum(consul.request_count(c) for c in clients.values())

    def run(self, on_snapshot: Callable[[Snapshot], None], stop: threading.Event) -> None:
        for thread in self._start_sources(stop):
            thread.start()
        debouncer = Debouncer(self.watch.wait_min, self.watch.wait_max)
        seen = 0
        while not stop.is_set():
            with self._cond:
                deadline = debouncer.deadline()
                timeout = 0.2 if deadline is None else max(0.0, min(0.2, deadline - self.clock()))
                if self._changes == seen and timeout > 0:
                    self._cond.wait(timeout)
                changes = self._changes
            now = self.clock()
            if changes != seen:
                seen = changes
                emit = debouncer.change(now)
            else:
                emit = debouncer.due(now)
            if emit and not stop.is_set():
                debouncer.emitted(now)
                self._emit(on_snapshot)

    def current_routes(self) -> Tuple[Route, ...]:
        with self._cond:
            kv = dict(self._kv or {})
        routes, warnings = merge_routes(self.settings.routes, kv)
        self._route_warnings.report(warnings)
        return routes

    def instance_totals(self) -> Dict[str, int]:
        """Instances per service in the catalog, whatever their health (for status)."""
        with self._cond:
            entries = self._entries or {}
            return {name: len(values) for name, values in entries.items()}

    def snapshot(self) -> Optional[Snapshot]:
        """The snapshot of what is known now, or None before both catalog and KV have been read once."""
        with self._cond:
            entries, kv = self._entries, self._kv
        if entries is None or kv is None:
            return None
        routes = self.current_routes()
        snapshot, warnings = self._builder.build(routes, entries, self.watch.include_warning)
        self._instance_warnings.report(warnings)
        return snapshot

    # -- emission --------------------------------------------------------------------------------

    def _emit(self, on_snapshot: Callable[[Snapshot], None]) -> None:
        snapshot = self.snapshot()
        if snapshot is None or snapshot == self.last_snapshot:
            return
        self.last_snapshot = snapshot
        on_snapshot(snapshot)

    def _changed(self) -> None:
        with self._cond:
            self._changes += 1
            self._cond.notify_all()

    # -- read loops ------------------------------------------------------------------------------

    def _start_sources(self, stop: threading.Event) -> List[threading.Thread]:
        if self.watch.mode == "poll":
            targets = [("poll", self._poll_loop, ())]
        else:
            targets = [
                ("catalog", self._blocking_loop, ("catalog", self.catalog.read, self._store_entries)),
                ("kv", self._blocking_loop, ("kv", self._read_kv, self._store_kv)),
            ]
        threads = []
        for name, target, args in targets:
            self.sources[name] = SourceStatus(name)
            threads.append(
                threading.Thread(
                    target=target, args=(*args, stop), name=f"basenode-watch-{name}", daemon=True
                )
            )
        return threads

    def _catalog_reader(self) -> CatalogReader:
        client = self.client

        def read_dump() -> Entries:
            return consul.health_entries_from_dump(consul.catalog_dump(client)[1])

        return CatalogReader(
            read_summary=lambda index, wait: consul.service_summaries(client, index=index, wait=wait),
            read_dump=read_dump,
            read_service=lambda name: consul.service_entries(client, name)[1],
            clock=self.clock,
        )

    def _read_kv(self, index: int, wait: Optional[str]) -> Tuple[int, Dict[str, Optional[str]]]:
        return consul.kv_recurse(self.kv_client, ROUTES_KV_PREFIX, index=index, wait=wait)

    def _store_entries(self, entries: Entries) -> bool:
        with self._cond:
            if entries == self._entries:
                return False
            self._entries = entries
        return True

    def _store_kv(self, values: Dict[str, Optional[str]]) -> bool:
        with self._cond:
            if values == self._kv:
                return False
            self._kv = values
        return True

    def _blocking_loop(
        self,
        name: str,
        read: Callable[[int, Optional[str]], Tuple[int, Any]],
        store: Callable[[Any], bool],
        stop: threading.Event,
    ) -> None:
        pacing = Pacing(self.wait_seconds, self.rng, self.clock)
        blocking_loop(read, store, self._changed, stop, self.sources[name], pacing)

    def _poll_loop(self, stop: threading.Event) -> None:
        status = self.sources["poll"]
        while not stop.is_set():
            try:
                _, values = consul.kv_recurse(self.client, ROUTES_KV_PREFIX)
                routes, _ = merge_routes(self.settings.routes, values)
                entries = dict(self._entries or {})
                for route in routes:
                    _, entries[route.service] = consul.service_entries(self.client, route.service)
            except consul.ERRORS as e:
                # Nothing read this round is kept: one round is one consistent picture.
                read_failed(status, e, stop, self.rng)
                continue
            status.reads += 1
            read_recovered(status)
            kv_changed = self._store_kv(values)
            if self._store_entries(entries) or kv_changed:
                self._changed()
            stop.wait(self.watch.poll_interval)


def fetch_snapshot(
    settings: Settings, client: Optional[consul.Client] = None, timeout: float = consul.DEFAULT_TIMEOUT
) -> Snapshot:
    """One snapshot, read now (for `basenode render` and `sync --once`). Raises ConsulUnavailable.

    Reads KV, then each routed service: one request per route, no catalog dump.
    """
    client = client or consul.make_client(settings.consul_http, timeout=timeout)
    try:
        _, values = consul.kv_recurse(client, ROUTES_KV_PREFIX)
        routes, route_warnings = merge_routes(settings.routes, values)
        entries: Entries = {}
        for route in routes:
            _, entries[route.service] = consul.service_entries(client, route.service)
    except consul.ERRORS as e:
        raise ConsulUnavailable(_unavailable(settings, e)) from e
    snapshot, warnings = build_snapshot(routes, entries, settings.watch.include_warning)
    for text in [*route_warnings, *warnings]:
        log.warning("%s", text)
    return snapshot


def static_snapshot(settings: Settings) -> Snapshot:
    """The configured routes with no instances: what `basenode check` renders without a cluster."""
    snapshot, _ = build_snapshot(settings.routes, {})
    return snapshot


def agent_reachable(settings: Settings, timeout: float = consul.DEFAULT_TIMEOUT) -> str:
    """The leader's address when the agent answers and the cluster has a leader; else ConsulUnavailable."""
    client = consul.make_client(settings.consul_http, timeout=timeout)
    try:
        leader = consul.leader(client)
    except consul.ERRORS as e:
        raise ConsulUnavailable(_unavailable(settings, e)) from e
    if not leader:
        raise ConsulUnavailable(
            f"the agent at {settings.consul_http.addr} answers but the cluster has no leader"
        )
    return leader


def _unavailable(settings: Settings, error: BaseException) -> str:
    return f"cannot read Consul at {settings.consul_http.addr}: {type(error).__name__}: {error}"[:500]
