"""One read of one dependency (consul-template's Fetch): the request, then the validated value.

`fetch` is what a blocking view repeats (watch/view.py) and what the one-shot commands call once
(`render`, `check`, `sync --once`: `fetch_now`). Both see the same validation.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..config import ConsulHTTP
from ..consul_async import Answer, ConsulException, Pool
from ..snapshot import Rejected
from . import catalog, health_service, kv
from .answers import BadAnswer
from .query import KEY, NODE, PREFIX, SERVICE, SERVICES, Query

# What a failed read looks like, whichever layer noticed: the transport, Consul's status, the shape of
# its answer, or a value validation refused as a whole (node()).
READ_ERRORS = (ConsulException, BadAnswer, Rejected)
ONE_SHOT_CONNECTIONS = 8


@dataclass(frozen=True)
class Result:
    index: int  # X-Consul-Index of the read that blocked
    value: Any  # validated and immutable: see each kind's module for its shape
    warnings: Tuple[str, ...] = ()  # one per value dropped on the way (a hostile instance, a bad tag)


def blocking_params(index: int, wait: Optional[str]) -> List[Tuple[str, str]]:
    """Consul's blocking-query parameters; a plain read when there is no index to block on yet."""
    if not index:
        return []
    return [("index", str(index))] + ([("wait", wait)] if wait else [])


async def fetch(
    pool: Pool,
    query: Query,
    index: int = 0,
    wait: Optional[str] = None,
    wait_seconds: Optional[float] = None,
    include_warning: bool = False,
) -> Result:
    """Read `query` once, blocking on `index` when it is not 0. READ_ERRORS on failure."""
    params = blocking_params(index, wait)
    blocking = wait_seconds if params else None

    async def get(path: str, extra: Iterable[Tuple[str, str]] = ()) -> Answer:
        return await pool.get(path, [*params, *extra], wait_seconds=blocking)

    if query.kind == SERVICE:
        answer = await get(
            health_service.path(query.name), [("dc", query.datacenter)] if query.datacenter else []
        )
        value, warnings = health_service.decode(query.name, answer.body, include_warning)
        return Result(answer.index, value, tuple(warnings))
    if query.kind == KEY:
        answer = await get(kv.path(query.name))
        return Result(answer.index, kv.decode_key(query.name, answer.body))
    if query.kind == PREFIX:
        answer = await get(kv.path(query.name), [("recurse", "true")])
        return Result(answer.index, kv.decode_prefix(query.name, answer.body))
    if query.kind == SERVICES:
        answer = await get(catalog.SERVICES_PATH)
        services, warnings = catalog.decode_services(answer.body)
        return Result(answer.index, services, tuple(warnings))
    if query.kind == NODE:
        name, datacenter = catalog.agent_node((await pool.get(catalog.AGENT_SELF_PATH)).body)
        answer = await get(catalog.node_path(str(name)))
        return Result(answer.index, catalog.decode_node(name, datacenter, answer.body))
    raise ValueError(f"unknown dependency kind {query.kind!r}")


def fetch_now(
    http: ConsulHTTP, queries: Iterable[Query], include_warning: bool = False, timeout: float = 10.0
) -> Tuple[Dict[Query, Any], List[str]]:
    """Each query read once, now, with no blocking (`render`, `check`, `sync --once`).

    Returns the values and the warnings of what was dropped; READ_ERRORS when any read fails.
    """
    wanted = sorted(set(queries))

    async def read_all() -> List[Result]:
        pool = Pool(http, max_connections=ONE_SHOT_CONNECTIONS, timeout=timeout)
        try:
            return list(
                await asyncio.gather(*(fetch(pool, q, include_warning=include_warning) for q in wanted))
            )
        finally:
            await pool.close()

    results = asyncio.run(read_all())
    warnings = [text for result in results for text in result.warnings]
    return {q: r.value for q, r in zip(wanted, results)}, warnings
