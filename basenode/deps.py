"""Watch what templates depend on: exactly one blocking query per distinct Query, shared by all templates.

`want(queries)` makes the watched set equal to `queries`: a query new to it gets a thread running
watch.blocking_loop (same backoff, jitter and index rules as discovery) on its own client (a requests
Session is not meant to be shared by threads); a query no longer wanted has its thread stopped. A
stopped thread notices at its next wake (at most the blocking `wait` later, 5 minutes by default), drops
what that last read brought and ends, and its value leaves the cache; wanted again before then, the
same thread carries on, so there is never more than one query in flight per dependency.

Each answer is validated here, with snapshot.py's rules, before it is cached (see templates.Data for
the shapes); an answer that fails validation as a whole (node()) counts as a failed read, and the last
good value stays. `run(on_change, stop)` reports which queries changed, debounced as the discovery
watcher debounces snapshots (watch.Debouncer, leading edge).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Set, Tuple

from . import consul, watch
from .config import Settings
from .snapshot import Rejected, instance_from_health, node_from_agent, services_from_catalog
from .templates import KEY, NODE, PREFIX, SERVICE, SERVICES, Query

log = logging.getLogger(__name__)

Read = Callable[[int, Optional[str]], Tuple[int, Any]]


def service_value(
    name: str, entries: Iterable[Any], include_warning: bool
) -> Tuple[Tuple[Tuple[Any, bool], ...], list]:
    """Health entries -> ((Instance, passing), ...) sorted by key, and a warning per dropped instance."""
    kept: Dict[str, Tuple[Any, bool]] = {}
    warnings = []
    for entry in entries:
        try:
            instance = instance_from_health(entry)
        except Rejected as e:
            ident = (entry.get("Service") or {}).get("ID")
            warnings.append(f"service({name!r}): dropped instance {ident!r}: {e}")
            continue
        kept[instance.key] = (instance, consul.healthy(entry.get("Checks"), include_warning))
    return tuple(kept[key] for key in sorted(kept)), warnings


def prefix_value(prefix: str, values: Dict[str, Optional[str]]) -> Tuple[Tuple[str, str], ...]:
    """Keys under `prefix` with a text value; folders, the prefix itself and non-UTF-8 values left out."""
    return tuple(
        sorted((k, v) for k, v in values.items() if v is not None and k != prefix and not k.endswith("/"))
    )


def reader(query: Query, client: consul.Client, include_warning: bool, warn: watch.WarnOnce) -> Read:
    """read(index, wait) -> (index, validated value) for one query, on its own client."""
    if query.kind == SERVICE:

        def read_service(index: int, wait: Optional[str]) -> Tuple[int, Any]:
            new_index, entries = consul.service_entries(client, query.name, index=index, wait=wait)
            value, warnings = service_value(query.name, entries, include_warning)
            warn.report(warnings)
            return new_index, value

        return read_service
    if query.kind == SERVICES:

        def read_services(index: int, wait: Optional[str]) -> Tuple[int, Any]:
            new_index, raw = consul.catalog_services(client, index=index, wait=wait)
            value, warnings = services_from_catalog(raw)
            warn.report(warnings)
            return new_index, value

        return read_services
    if query.kind == KEY:
        return lambda index, wait: consul.kv_get(client, query.name, index=index, wait=wait)
    if query.kind == PREFIX:

        def read_prefix(index: int, wait: Optional[str]) -> Tuple[int, Any]:
            new_index, values = consul.kv_recurse(client, query.name, index=index, wait=wait)
            return new_index, prefix_value(query.name, values)

        return read_prefix
    if query.kind == NODE:

        def read_node(index: int, wait: Optional[str]) -> Tuple[int, Any]:
            new_index, raw = consul.local_node(client, index=index, wait=wait)
            return new_index, node_from_agent(raw)  # Rejected: a failed read, the last good stays

        return read_node
    raise ValueError(f"unknown query kind {query.kind!r}")


@dataclass
class _Watch:
    query: Query
    stop: threading.Event = field(default_factory=threading.Event)
    status: watch.SourceStatus = field(default_factory=lambda: watch.SourceStatus(""))
    client: Any = None
    thread: Optional[threading.Thread] = None


class DependencyWatcher:
    """The shared cache of validated query values, and one blocking-query thread per wanted query."""

    def __init__(
        self,
        settings: Settings,
        make_client: Optional[Callable[[], Any]] = None,
        make_reader: Optional[Callable[[Query, Any], Read]] = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Optional[random.Random] = None,
    ) -> None:
        self.settings = settings
        self.pacing = watch.Pacing(
            consul.parse_wait(settings.watch.blocking_wait), rng or random.Random(), clock
        )
        self._make_client = make_client or (lambda: consul.make_client(settings.consul_http))
        self._make_reader = make_reader or self._default_reader
        self._cond = threading.Condition()
        self._data: Dict[Query, Any] = {}
        self._watches: Dict[Query, _Watch] = {}
        self._changed: Set[Query] = set()
        self._changes = 0
        self._closed = False
        self._finished_requests = 0

    # -- what templates want ---------------------------------------------------------------------

    def want(self, queries: Iterable[Query]) -> None:
        """Watch exactly `queries`: start the new ones, stop the ones no longer wanted."""
        wanted = set(queries)
        with self._cond:
            if self._closed:
                return
            for query, w in self._watches.items():
                if query in wanted:
                    w.stop.clear()  # wanted again before its thread noticed: it carries on
                elif not w.stop.is_set():
                    log.debug("templates: no longer watching %s", query)
                    w.stop.set()
            for query in wanted - set(self._watches):
                self._start(query)

    def data(self) -> Dict[Query, Any]:
        """A copy of every value known now: one consistent view for a round of renders."""
        with self._cond:
            return dict(self._data)

    def watched(self) -> FrozenSet[Query]:
        """Queries with a live thread that is not stopping."""
        with self._cond:
            return frozenset(q for q, w in self._watches.items() if not w.stop.is_set())

    def sources(self) -> List[watch.SourceStatus]:
        """The read state of every query still wanted (for status: failing reads, errors, index)."""
        with self._cond:
            return [w.status for w in self._watches.values() if not w.stop.is_set()]

    def threads(self) -> int:
        """Query threads alive, stopping ones included."""
        with self._cond:
            return sum(1 for w in self._watches.values() if w.thread is not None and w.thread.is_alive())

    @property
    def requests(self) -> int:
        with self._cond:
            live = sum(consul.request_count(w.client) for w in self._watches.values() if w.client)
            return self._finished_requests + live

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for w in self._watches.values():
                w.stop.set()
            self._cond.notify_all()

    # -- change notification ---------------------------------------------------------------------

    def run(self, on_change: Callable[[FrozenSet[Query]], None], stop: threading.Event) -> None:
        """Call on_change(changed queries) on this thread, debounced, until `stop` is set."""
        watch_settings = self.settings.watch
        debouncer = watch.Debouncer(watch_settings.wait_min, watch_settings.wait_max)
        clock = self.pacing.clock
        seen = 0
        while not stop.is_set():
            with self._cond:
                deadline = debouncer.deadline()
                timeout = 0.2 if deadline is None else max(0.0, min(0.2, deadline - clock()))
                if self._changes == seen and timeout > 0:
                    self._cond.wait(timeout)
                changes = self._changes
            now = clock()
            emit = debouncer.change(now) if changes != seen else debouncer.due(now)
            seen = changes
            if emit and not stop.is_set():
                debouncer.emitted(now)
                with self._cond:
                    changed, self._changed = frozenset(self._changed), set()
                if changed:
                    on_change(changed)

    # -- threads ---------------------------------------------------------------------------------

    def _default_reader(self, query: Query, client: Any) -> Read:
        return reader(query, client, self.settings.watch.include_warning, watch.WarnOnce(log))

    def _start(self, query: Query) -> None:
        w = _Watch(query, status=watch.SourceStatus(str(query)), client=self._make_client())
        w.thread = threading.Thread(
            target=self._follow, args=(w,), name=f"basenode-dep-{query.kind}", daemon=True
        )
        self._watches[query] = w
        log.debug("templates: watching %s", query)
        w.thread.start()

    def _follow(self, w: _Watch) -> None:
        read = self._make_reader(w.query, w.client)

        def store(value: Any) -> bool:
            with self._cond:
                if w.query in self._data and self._data[w.query] == value:
                    return False
                self._data[w.query] = value
                self._changed.add(w.query)
            return True

        while True:
            watch.blocking_loop(read, store, self._notify, w.stop, w.status, self.pacing)
            with self._cond:
                if w.stop.is_set() or self._closed:
                    del self._watches[w.query]
                    self._data.pop(w.query, None)
                    if w.client is not None:
                        self._finished_requests += consul.request_count(w.client)
                    break
        if isinstance(w.client, consul.Client):
            w.client.http.close()

    def _notify(self) -> None:
        with self._cond:
            self._changes += 1
            self._cond.notify_all()


def fetch(
    settings: Settings, queries: Iterable[Query], client: Optional[consul.Client] = None
) -> Dict[Query, Any]:
    """Each query read once, now, with no blocking (`render`, `check`, `sync --once`); consul.ERRORS."""
    client = client or consul.make_client(settings.consul_http)
    warn = watch.WarnOnce(log)
    return {q: reader(q, client, settings.watch.include_warning, warn)(0, None)[1] for q in queries}
