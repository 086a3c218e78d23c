"""One read of a dependency: the endpoint and parameters each kind asks for, blocking or not, and the
one-shot reads of `render`, `check` and `sync --once` (fetch_now) against a loopback Consul."""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

from basenode.config import ConsulHTTP
from basenode.consul_async import Answer, ConsulException
from basenode.dependency import KEY, NODE, PREFIX, READ_ERRORS, SERVICE, SERVICES, Query, fetch, fetch_now
from tests.unit.fake_consul import FakeConsul


class RecordingPool:
    """Answers each path from `bodies`; records (path, params, wait_seconds)."""

    def __init__(self, bodies: Dict[str, Any], index: int = 42) -> None:
        self.bodies = bodies
        self.index = index
        self.gets: List[Tuple[str, List[Tuple[str, str]], Optional[float]]] = []

    async def get(
        self, path: str, params: Sequence[Tuple[str, str]] = (), wait_seconds: Optional[float] = None
    ) -> Answer:
        self.gets.append((path, list(params), wait_seconds))
        return Answer(200 if path in self.bodies else 404, self.index, self.bodies.get(path))


def fetch_with(pool: RecordingPool, query: Query, **kwargs: Any):
    return asyncio.run(fetch(pool, query, **kwargs))  # type: ignore[arg-type]


def test_a_first_read_is_plain_and_a_later_one_blocks_on_the_index_with_the_wait():
    pool = RecordingPool({"/v1/kv/app/x": [{"Key": "app/x", "Value": None}]})
    first = fetch_with(pool, Query(KEY, "app/x"))
    later = fetch_with(pool, Query(KEY, "app/x"), index=40, wait="290s", wait_seconds=290.0)
    assert (first.index, first.value) == (42, "") and later.value == ""
    assert pool.gets == [
        ("/v1/kv/app/x", [], None),
        ("/v1/kv/app/x", [("index", "40"), ("wait", "290s")], 290.0),
    ]


def test_each_kind_reads_its_documented_endpoint():
    pool = RecordingPool(
        {
            "/v1/health/service/web": [],
            "/v1/kv/app/": [{"Key": "app/a", "Value": base64.b64encode(b"1").decode()}],
            "/v1/catalog/services": {"web": ["a"], "consul": []},
            "/v1/agent/self": {"Config": {"NodeName": "n1", "Datacenter": "dc1"}},
            "/v1/catalog/node/n1": {"Node": {"Node": "n1", "Address": "10.0.0.1"}, "Services": {}},
        }
    )
    assert fetch_with(pool, Query(SERVICE, "web")).value == ()
    assert fetch_with(pool, Query(PREFIX, "app/")).value == (("app/a", "1"),)
    assert fetch_with(pool, Query(SERVICES)).value == (("consul", ()), ("web", ("a",)))
    assert dict(fetch_with(pool, Query(NODE)).value) == {
        "name": "n1",
        "datacenter": "dc1",
        "address": "10.0.0.1",
    }
    assert [(path, params) for path, params, _ in pool.gets] == [
        ("/v1/health/service/web", []),
        ("/v1/kv/app/", [("recurse", "true")]),
        ("/v1/catalog/services", []),
        ("/v1/agent/self", []),
        ("/v1/catalog/node/n1", []),
    ]


def test_a_blocking_node_read_blocks_on_the_catalog_not_on_the_agents_own_answer():
    pool = RecordingPool(
        {
            "/v1/agent/self": {"Config": {"NodeName": "n1", "Datacenter": "dc1"}},
            "/v1/catalog/node/n1": {"Node": {"Node": "n1", "Address": "10.0.0.1"}},
        }
    )
    fetch_with(pool, Query(NODE), index=7, wait="60s", wait_seconds=60.0)
    assert pool.gets == [
        ("/v1/agent/self", [], None),
        ("/v1/catalog/node/n1", [("index", "7"), ("wait", "60s")], 60.0),
    ]


def test_the_warnings_of_what_was_dropped_come_with_the_value():
    hostile = {
        "Node": {"Node": "n1", "Address": "10.0.0.1"},
        "Service": {"ID": "evil", "Service": "web", "Address": "1.2.3.4; rm", "Port": 80},
        "Checks": [],
    }
    result = fetch_with(RecordingPool({"/v1/health/service/web": [hostile]}), Query(SERVICE, "web"))
    assert result.value == () and len(result.warnings) == 1 and "'evil'" in result.warnings[0]


@pytest.fixture
def consul():
    fake = FakeConsul()
    yield fake
    fake.close()


def test_fetch_now_reads_each_query_once_and_gives_values_and_warnings(consul):
    consul.set("/v1/kv/app/x", [{"Key": "app/x", "Value": base64.b64encode(b"1").decode()}])
    consul.set("/v1/health/service/web", [])
    values, warnings = fetch_now(
        ConsulHTTP(addr=consul.addr), [Query(KEY, "app/x"), Query(SERVICE, "web"), Query(KEY, "app/x")]
    )
    assert values == {Query(KEY, "app/x"): "1", Query(SERVICE, "web"): ()}
    assert warnings == []
    assert len(consul.reads("/v1/kv/app/x")) == 1 and not any(r.blocking for r in consul.requests)


def test_fetch_now_fails_as_a_whole_when_one_read_fails(consul):
    consul.set("/v1/kv/app/x", [{"Key": "app/x", "Value": None}])
    consul.statuses["/v1/health/service/web"] = 500
    with pytest.raises(READ_ERRORS) as failed:
        fetch_now(ConsulHTTP(addr=consul.addr), [Query(KEY, "app/x"), Query(SERVICE, "web")])
    assert isinstance(failed.value, ConsulException) and "500" in str(failed.value)


@pytest.mark.parametrize("key", ["app/a b", "app/caf\u00e9", "app/x?y", "app/50%"])
def test_a_kv_key_of_any_text_is_read_as_that_very_key(consul, key):
    # Consul keys may hold spaces, non-ASCII letters, ? # %: the path must carry them percent-encoded.
    consul.set(f"/v1/kv/{key}", [{"Key": key, "Value": base64.b64encode(b"v").decode()}])
    values, _ = fetch_now(ConsulHTTP(addr=consul.addr), [Query(KEY, key)])
    assert values == {Query(KEY, key): "v"}
    assert [r.path for r in consul.requests] == [f"/v1/kv/{key}"]
