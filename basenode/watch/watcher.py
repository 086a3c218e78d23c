"""The set of dependencies in use, each followed by its own blocking query, on one event loop.

`want(owner, queries)` says what one user needs (HAProxy's routes, HAProxy's template, the templates);
the watched set is the union, so two users of one read share one query. A query nobody wants any more
is cancelled at once and its value leaves the cache. Every query runs as a task on one asyncio loop in
one thread, over one connection pool (consul_async.Pool) that never holds more than `watch.max_conns`
connections to the agent: whatever the number of dependencies, the sync process has a fixed number of
threads and Consul's per-client connection limit (200 by default) is never reached.

Within the budget every dependency has its own query, so a change wakes only the nodes that use what
changed. Past it, the service dependencies that do not fit ride on one catalog-wide watch
(watch/catalog.py); non-service dependencies (KV, the service list, the node) always get their own.

`run(on_change, stop)` reports, on the caller's thread, which queries changed, debounced on the
leading edge (watch/debounce.py). Values are validated before they are cached (dependency/).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import random
import threading
import time
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Set, Tuple

from .. import durations
from ..config import Settings
from ..consul_async import Counters, Pool
from ..dependency import READ_ERRORS, SERVICE, Query, fetch
from .catalog import CatalogView
from .debounce import Debouncer
from .view import Pacing, SourceStatus, follow

log = logging.getLogger("basenode.watch")
CATALOG_SOURCE = "catalog (services past watch.max_conns)"
PAST_BUDGET_POLL = 2.0  # seconds between reads of a KV or catalog query that found no connection


class Watcher:
    """The shared cache of validated values, and one blocking query per wanted dependency."""

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
        rng: Optional[random.Random] = None,
    ) -> None:
        watch = settings.watch
        self.settings = settings
        self.max_conns = watch.max_conns
        self.include_warning = watch.include_warning
        self.pacing = Pacing(durations.parse_wait(watch.blocking_wait), rng or random.Random(), clock)
        self.pool = Pool(settings.consul_http, max_connections=self.max_conns)
        self._cond = threading.Condition()
        self._wants: Dict[str, FrozenSet[Query]] = {}
        self._wanted: FrozenSet[Query] = frozenset()  # the union of _wants, kept with it
        self._data: Dict[Query, Any] = {}
        self._changed: Set[Query] = set()
        self._changes = 0
        self._statuses: Dict[Query, SourceStatus] = {}
        self._overflow: FrozenSet[str] = frozenset()
        self._catalog_status = SourceStatus(CATALOG_SOURCE)
        # Loop thread only:
        self._tasks: Dict[Query, Tuple[asyncio.Task, bool]] = {}  # the task, and whether it polls
        self._catalog_task: Optional[asyncio.Task] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._reconcile_queued = False
        self._closed = False
        self._loop_ready = threading.Event()

    # -- what users want (any thread) -------------------------------------------------------------

    def want(self, owner: str, queries: Iterable[Query]) -> None:
        """`owner` needs exactly `queries` from now on; the watched set is every owner's union."""
        wanted = frozenset(queries)
        with self._cond:
            if self._closed or self._wants.get(owner) == wanted:
                return
            self._wants[owner] = wanted
            self._wanted = frozenset().union(*self._wants.values())
            queue = not self._reconcile_queued
            self._reconcile_queued = True
        self._start_loop()
        if queue and self._loop is not None:
            self._loop.call_soon_threadsafe(self._reconcile)
        elif queue:  # closed before the loop ever ran
            with self._cond:
                self._reconcile_queued = False

    def data(self) -> Dict[Query, Any]:
        """A copy of every value known now: one consistent view for a round of renders."""
        with self._cond:
            return dict(self._data)

    def watched(self) -> FrozenSet[Query]:
        """The queries being followed now (with their own query, or on the catalog watch)."""
        with self._cond:
            return frozenset(self._statuses) | frozenset(Query(SERVICE, s) for s in self._overflow)

    def overflow(self) -> FrozenSet[str]:
        """Services past the budget, served by the catalog-wide watch."""
        with self._cond:
            return self._overflow

    def sources(self) -> List[SourceStatus]:
        """The read state of every query followed now (for status: failing reads, errors, index)."""
        with self._cond:
            statuses = list(self._statuses.values())
            if self._overflow:
                statuses.append(self._catalog_status)
            return statuses

    def indexes(self) -> Dict[Query, int]:
        """Each followed query's X-Consul-Index; a value read after this call is at least that new."""
        with self._cond:
            return {query: status.index for query, status in self._statuses.items() if status.index}

    @property
    def counters(self) -> Counters:
        return self.pool.counters

    # -- the consumer (the caller's thread) -------------------------------------------------------

    def run(self, on_change: Callable[[FrozenSet[Query]], None], stop: threading.Event) -> None:
        """Call on_change(changed queries) on this thread, debounced, until `stop` is set."""
        self._start_loop()
        debouncer = Debouncer(self.settings.watch.wait_min, self.settings.watch.wait_max)
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

    def wait_for(self, queries: Iterable[Query], timeout: float) -> bool:
        """Block until every one of `queries` has a value (True) or `timeout` passes (False)."""
        wanted = frozenset(queries)
        deadline = time.monotonic() + timeout
        with self._cond:
            while not wanted <= self._data.keys():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.2))
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            thread.join(timeout=5.0)

    # -- the loop thread ----------------------------------------------------------------------------

    def _start_loop(self) -> None:
        """Start the loop thread once; every caller returns only once the loop exists (a want() that
        came while it started would otherwise have nowhere to go)."""
        with self._cond:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._serve, args=(self._loop_ready,), name="basenode-watch", daemon=True
                )
                self._thread.start()
        if self._thread is not None:
            self._loop_ready.wait()

    def _serve(self, started: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        # Name lookups of a host-name agent address run in the default executor: one thread will do.
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=1))
        asyncio.set_event_loop(loop)
        self._loop = loop
        started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        tasks = [task for task, _ in self._tasks.values()]
        tasks += [self._catalog_task] if self._catalog_task else []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.pool.close()
        asyncio.get_running_loop().stop()

    def _reconcile(self) -> None:
        """Make the running queries match what is wanted, within the budget."""
        with self._cond:
            self._reconcile_queued = False
            if self._closed:
                return
            wanted = self._wanted
        direct, polled, overflow = self._assign(wanted)
        mode = {**dict.fromkeys(direct, False), **dict.fromkeys(polled, True)}
        for query in [q for q, (_, was_polled) in self._tasks.items() if mode.get(q) is not was_polled]:
            self._tasks.pop(query)[0].cancel()
            log.debug("no longer watching %s", query)
        with self._cond:
            for query in [q for q in self._data if q not in wanted]:
                del self._data[query]
            for query in [q for q in self._statuses if q not in mode]:
                del self._statuses[query]
            if overflow != self._overflow:
                if overflow:
                    log.info(
                        "%d services past watch.max_conns (%d) ride on one catalog-wide watch",
                        len(overflow),
                        self.max_conns,
                    )
                self._overflow = overflow
                restart_catalog = True
            else:
                restart_catalog = False
        if polled:
            log.warning(
                "%d KV/catalog queries past watch.max_conns (%d) are read every %.0f s instead of blocking",
                len(polled),
                self.max_conns,
                PAST_BUDGET_POLL,
            )
        for query in sorted(mode.keys() - self._tasks.keys()):
            with self._cond:
                status = self._statuses.setdefault(query, SourceStatus(str(query)))
            pacing = dataclasses.replace(self.pacing, poll_interval=PAST_BUDGET_POLL) if mode[query] else None
            self._tasks[query] = (asyncio.ensure_future(self._follow(query, status, pacing)), mode[query])
            log.debug("watching %s", query)
        if restart_catalog:
            if self._catalog_task is not None:
                self._catalog_task.cancel()
                self._catalog_task = None
            if overflow:
                self._catalog_task = asyncio.ensure_future(self._follow_catalog(overflow))

    def _assign(self, wanted: FrozenSet[Query]) -> Tuple[FrozenSet[Query], FrozenSet[Query], FrozenSet[str]]:
        """(queries with their own blocking query, queries polled, services on the catalog watch).

        Within the budget everything blocks. Past it one connection is kept for the catalog watch,
        and the other queries (nothing else can serve them: KV, the service list, the node, services
        of other datacenters, which the local catalog does not hold) get the blocking slots first; if
        even they do not fit, one more connection is kept for the rest, which are polled every
        PAST_BUDGET_POLL seconds. Queries already blocking keep their slot (a change elsewhere does
        not move them), then by name.
        """
        if len(wanted) <= self.max_conns:
            return wanted, frozenset(), frozenset()
        others = sorted(q for q in wanted if q.kind != SERVICE or q.datacenter)
        services = sorted(q for q in wanted if q.kind == SERVICE and not q.datacenter)
        slots = self.max_conns - (1 if services else 0)  # the catalog watch's
        if len(others) > slots:
            slots -= 1  # the polled queries'
        blocking = self._seniors(others, slots)
        blocking |= self._seniors(services, slots - len(blocking))
        polled = frozenset(q for q in others if q not in blocking)
        return blocking, polled, frozenset(q.name for q in services if q not in blocking)

    def _seniors(self, queries: List[Query], slots: int) -> FrozenSet[Query]:
        """Up to `slots` of `queries`: those blocking now first, then in the order given."""
        running = [q for q in queries if q in self._tasks and not self._tasks[q][1]]
        rest = [q for q in queries if q not in running]
        return frozenset((running + rest)[: max(slots, 0)])

    async def _follow(self, query: Query, status: SourceStatus, pacing: Optional[Pacing] = None) -> None:
        async def read(index: int, wait: Optional[str], seconds: Optional[float]) -> tuple:
            result = await fetch(self.pool, query, index, wait, seconds, self.include_warning)
            return result.index, result.value, result.warnings

        store = lambda value: self._store({query: value})  # noqa: E731
        await follow(read, store, status, pacing or self.pacing, READ_ERRORS)

    async def _follow_catalog(self, services: FrozenSet[str]) -> None:
        view = CatalogView(self.pool, services, self.include_warning, self.pacing.clock)

        def store(values: Dict[str, Any]) -> None:
            self._store({Query(SERVICE, name): value for name, value in values.items()})

        await follow(view.read, store, self._catalog_status, self.pacing, READ_ERRORS)

    def _store(self, values: Dict[Query, Any]) -> None:
        with self._cond:
            wanted = self._wanted
            changed = False
            for query, value in values.items():
                if query not in wanted or (query in self._data and self._data[query] == value):
                    continue
                self._data[query] = value
                self._changed.add(query)
                changed = True
            if changed:
                self._changes += 1
                self._cond.notify_all()
