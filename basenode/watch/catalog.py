"""The services that do not fit the connection budget, behind one blocking query on the whole catalog.

Past `watch.max_conns` blocking queries, every further service dependency rides here: one blocking
read of the per-service summaries (/v1/internal/ui/services, whose index moves on any node, service
or check change), then only what that read cannot rule out:
- a service of ours whose summary changed is read alone (/v1/health/service/<name>);
- when no summary changed at all (a change the counts cannot show: an instance re-registered at a
  new address, two checks flipping opposite ways), or too many of ours did, everything of ours is
  read again: one read each when they are few, else the whole dump (/v1/internal/ui/nodes);
- a hidden change can ride along with a visible one in the same wake, so some seconds after a wake
  that changed something, one full read makes sure.
Consul 1.8 has no read that lists which services changed since an index, hence this shape. It costs
every node a read per change anywhere, which is why it is the fallback and not the default: within
the budget each service has its own query and a node pays nothing for changes elsewhere.

These two endpoints are internal (unversioned): they serve only this fallback. Their answers can hold
services imported from peer clusters (`PeerName`, Consul >= 1.14) and, in Consul Enterprise, other
namespaces and partitions: summaries are keyed by (peer, partition, namespace, name), and only local
entries of the default namespace and partition are routed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple

from ..consul_async import Pool
from ..dependency import SERVICE, Query, fetch
from ..dependency import health_service as hs
from ..dependency.answers import objects

SUMMARIES_PATH = "/v1/internal/ui/services"
DUMP_PATH = "/v1/internal/ui/nodes"
RECONCILE_AFTER = 5.0  # seconds after a wake that changed something until the read that makes sure
MAX_TARGETED = 16  # more of our services changed than this in one wake: one dump is cheaper

SummaryKey = Tuple[str, str, str, str]  # (peer, partition, namespace, name)
Values = Dict[str, hs.ServiceValue]


def local(item: Mapping[str, Any]) -> bool:
    """Not imported from a peer, and in the default partition and namespace."""
    return (
        not item.get("PeerName")
        and item.get("Partition") in (None, "", "default")
        and item.get("Namespace") in (None, "", "default")
    )


def summary_key(item: Mapping[str, Any]) -> SummaryKey:
    return (
        str(item.get("PeerName") or ""),
        str(item.get("Partition") or ""),
        str(item.get("Namespace") or ""),
        str(item.get("Name")),
    )


def summaries_by_key(body: Any) -> Dict[SummaryKey, Mapping[str, Any]]:
    return {summary_key(i): i for i in objects(body, SUMMARIES_PATH) if isinstance(i.get("Name"), str)}


def changed_local_names(
    old: Mapping[SummaryKey, Any], new: Mapping[SummaryKey, Any]
) -> Tuple[FrozenSet[str], bool]:
    """Names of local services whose summary changed, and whether any summary (any peer) changed."""
    changed = [key for key in {*old, *new} if old.get(key) != new.get(key)]
    names = frozenset(
        key[3] for key in changed if not key[0] and key[1] in ("", "default") and key[2] in ("", "default")
    )
    return names, bool(changed)


def entries_from_dump(body: Any, wanted: Iterable[str]) -> Dict[str, List[Dict[str, Any]]]:
    """The dump regrouped as /v1/health/service/<name> answers it, for the `wanted` services only:
    {service: [{Node, Service, Checks}]}; an entry's checks are its node's plus its own."""
    wanted = frozenset(wanted)
    by_service: Dict[str, List[Dict[str, Any]]] = {name: [] for name in wanted}
    for node in objects(body, DUMP_PATH):
        if not local(node):
            continue
        node_checks: List[Any] = []
        own_checks: Dict[Any, List[Any]] = {}
        for check in node.get("Checks") or ():
            if isinstance(check, Mapping):
                service_id = check.get("ServiceID")
                (own_checks.setdefault(service_id, []) if service_id else node_checks).append(check)
        for service in node.get("Services") or ():
            if not isinstance(service, Mapping) or service.get("Service") not in wanted or not local(service):
                continue
            entry = {
                "Node": node,
                "Service": service,
                "Checks": node_checks + own_checks.get(service.get("ID"), []),
            }
            by_service[service["Service"]].append(entry)
    return by_service


class CatalogView:
    """`read(index, wait, seconds)` for watch.view.follow, giving {service: value} for `services`."""

    def __init__(
        self,
        pool: Pool,
        services: FrozenSet[str],
        include_warning: bool,
        clock: Callable[[], float] = time.monotonic,
        reconcile_after: float = RECONCILE_AFTER,
        max_targeted: int = MAX_TARGETED,
    ) -> None:
        self.pool = pool
        self.services = services
        self.include_warning = include_warning
        self.clock = clock
        self.reconcile_after = reconcile_after
        self.max_targeted = max_targeted
        self.summaries: Optional[Dict[SummaryKey, Mapping[str, Any]]] = None
        self.values: Optional[Values] = None
        self.reconcile_at: Optional[float] = None

    async def read(
        self, index: int, wait: Optional[str], seconds: Optional[float]
    ) -> Tuple[int, Values, List[str]]:
        if self.values is None or self.summaries is None or not index:
            return await self._full()
        if self.reconcile_at is not None:
            remaining = self.reconcile_at - self.clock()
            if remaining <= 0:
                return await self._full()
            if seconds is not None and seconds > remaining:
                seconds = max(remaining, 0.001)
                wait = f"{max(1, int(seconds * 1000))}ms"
        params = [("index", str(index))] + ([("wait", wait)] if wait else [])
        answer = await self.pool.get(SUMMARIES_PATH, params, wait_seconds=seconds)
        if answer.index == index:
            return index, self.values, []  # the wait ran out: nothing moved
        summaries = summaries_by_key(answer.body)
        ours, any_changed = changed_local_names(self.summaries, summaries)
        ours &= self.services
        self.summaries = summaries
        if not any_changed or len(ours) > self.max_targeted or answer.index < index:
            return await self._full(answer.index, summaries)
        warnings: List[str] = []
        if ours:
            values = dict(self.values)
            for name, value, dropped in await self._read_each(sorted(ours)):
                values[name] = value
                warnings += dropped
            self.values = values
        if self.reconcile_at is None:
            self.reconcile_at = self.clock() + self.reconcile_after
        return answer.index, self.values, warnings

    async def _full(
        self, index: Optional[int] = None, summaries: Optional[Dict[SummaryKey, Mapping[str, Any]]] = None
    ) -> Tuple[int, Values, List[str]]:
        # Summary first, values second: the values are at least as new as the index we block on next,
        # so a change between the two reads is seen twice (harmless), never missed.
        if summaries is None or index is None:
            answer = await self.pool.get(SUMMARIES_PATH)
            index, summaries = answer.index, summaries_by_key(answer.body)
        warnings: List[str] = []
        values: Values = {}
        if len(self.services) <= self.max_targeted:
            for name, value, dropped in await self._read_each(sorted(self.services)):
                values[name] = value
                warnings += dropped
        else:
            dump = await self.pool.get(DUMP_PATH)
            for name, entries in entries_from_dump(dump.body, self.services).items():
                values[name], dropped = hs.decode(name, entries, self.include_warning)
                warnings += dropped
        self.summaries, self.values, self.reconcile_at = summaries, values, None
        return index, values, warnings

    async def _read_each(self, names: List[str]) -> List[Tuple[str, hs.ServiceValue, Tuple[str, ...]]]:
        # One after the other: this view has one connection for its reads, whatever their number.
        done = []
        for name in names:
            result = await fetch(self.pool, Query(SERVICE, name), include_warning=self.include_warning)
            done.append((name, result.value, result.warnings))
            await asyncio.sleep(0)
        return done
