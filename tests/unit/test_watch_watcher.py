"""The Watcher's bookkeeping, against a tiny Consul on loopback (blocking queries over real HTTP):
one query per dependency however many owners want it, unwanted ones stop and leave the cache,
changes are reported with their queries. And its connection budget (`_assign`, pure logic)."""

from __future__ import annotations

import base64
import threading
from typing import Any, Dict, FrozenSet, Iterator, List

import pytest

from basenode.config import ConsulHTTP, Settings, Watch
from basenode.dependency import KEY, NODE, PREFIX, SERVICE, SERVICES, Query
from basenode.watch import Watcher
from tests.support.waiting import eventually
from tests.unit.fake_consul import FakeConsul

WEB = Query(SERVICE, "web")
DB_URL = Query(KEY, "app/db_url")
OTHER = Query(KEY, "app/other")
WEB_PATH = "/v1/health/service/web"
DB_URL_PATH = "/v1/kv/app/db_url"
OTHER_PATH = "/v1/kv/app/other"


def watch_threads() -> int:
    """The watchers' threads alive in this process (each runs its event loop on `basenode-watch`)."""
    return sum(1 for t in threading.enumerate() if t.name == "basenode-watch")


def kv_body(key: str, value: str) -> List[Dict[str, Any]]:
    return [{"Key": key, "Value": base64.b64encode(value.encode()).decode(), "Flags": 0}]


def web_body(*addresses: str) -> List[Dict[str, Any]]:
    return [
        {
            "Node": {"Node": "n1", "Address": "127.0.0.1"},
            "Service": {"ID": f"web-{i}", "Service": "web", "Address": address, "Port": 80, "Tags": []},
            "Checks": [{"CheckID": "serfHealth", "Status": "passing"}],
        }
        for i, address in enumerate(addresses)
    ]


@pytest.fixture
def consul() -> Iterator[FakeConsul]:
    fake = FakeConsul()
    fake.set(WEB_PATH, web_body("10.0.0.1"))
    fake.set(DB_URL_PATH, kv_body("app/db_url", "postgres://a"))
    fake.set(OTHER_PATH, kv_body("app/other", "x"))
    yield fake
    fake.close()


@pytest.fixture
def watcher(consul: FakeConsul) -> Iterator[Watcher]:
    settings = Settings(consul_http=ConsulHTTP(addr=consul.addr), watch=Watch(wait_min=0.0, wait_max=0.0))
    made = Watcher(settings)
    yield made
    made.close()


class Reports:
    """watcher.run on its own thread, collecting what on_change was given."""

    def __init__(self, watcher: Watcher) -> None:
        self.seen: List[FrozenSet[Query]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=watcher.run, args=(self.seen.append, self.stop), daemon=True)

    def __enter__(self) -> Reports:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(5)


def addresses(watcher: Watcher) -> List[str]:
    return [i.address for i, _ in watcher.data().get(WEB, ())]


def test_a_dependency_wanted_by_several_owners_is_one_blocking_query(consul, watcher):
    watcher.want("routes", [WEB])
    watcher.want("templates", [WEB, DB_URL, WEB])
    eventually(
        lambda: consul.in_flight[WEB_PATH] == 1 and consul.in_flight[DB_URL_PATH] == 1,
        what="both blocking reads",
    )
    assert consul.most_in_flight[WEB_PATH] == 1 and consul.most_in_flight[DB_URL_PATH] == 1
    assert len(consul.reads(WEB_PATH)) == 2  # the first, plain, then one blocking read
    assert watcher.watched() == {WEB, DB_URL}
    assert watch_threads() == 1  # one event loop, whatever the number of queries
    assert addresses(watcher) == ["10.0.0.1"] and watcher.data()[DB_URL] == "postgres://a"


def test_a_dependency_no_longer_wanted_stops_being_watched_and_leaves_the_cache(consul, watcher):
    watcher.want("templates", [WEB, DB_URL])
    eventually(lambda: consul.in_flight[DB_URL_PATH] == 1, what="the key's blocking read")
    watcher.want("templates", [WEB])
    eventually(lambda: DB_URL not in watcher.data(), what="the key to leave the cache")
    eventually(lambda: consul.in_flight[DB_URL_PATH] == 0, what="its blocking read to be given up")
    assert watcher.watched() == {WEB}
    assert [s.name for s in watcher.sources()] == ["service web"]
    assert consul.in_flight[WEB_PATH] == 1


def test_a_dependency_one_owner_drops_and_another_still_wants_carries_on(consul, watcher):
    watcher.want("routes", [WEB])
    watcher.want("templates", [WEB])
    eventually(lambda: consul.in_flight[WEB_PATH] == 1, what="the blocking read")
    watcher.want("routes", [])
    watcher.want("templates", [WEB, OTHER])
    eventually(lambda: consul.in_flight[OTHER_PATH] == 1, what="the new query")
    assert consul.in_flight[WEB_PATH] == 1
    assert [r.blocking for r in consul.reads(WEB_PATH)] == [False, True]  # not started again
    assert watcher.watched() == {WEB, OTHER}


def test_changes_are_reported_with_the_queries_that_changed(consul, watcher):
    watcher.want("templates", [WEB, DB_URL, OTHER])
    with Reports(watcher) as reports:
        eventually(
            lambda: reports.seen and set().union(*reports.seen) == {WEB, DB_URL, OTHER}, what="first values"
        )
        eventually(lambda: consul.in_flight[DB_URL_PATH] == 1, what="the blocking read")
        reports.seen.clear()
        consul.set(DB_URL_PATH, kv_body("app/db_url", "postgres://b"))
        eventually(lambda: reports.seen and reports.seen[-1] == frozenset({DB_URL}), what="the one change")
        assert watcher.data()[DB_URL] == "postgres://b"
        consul.set(WEB_PATH, web_body("10.0.0.1", "10.0.0.2"))
        eventually(lambda: reports.seen[-1] == frozenset({WEB}), what="the service's change")
        assert addresses(watcher) == ["10.0.0.1", "10.0.0.2"]


def test_an_unchanged_answer_is_not_a_change(consul, watcher):
    watcher.want("templates", [DB_URL])
    with Reports(watcher) as reports:
        eventually(lambda: reports.seen, what="the first value")
        eventually(lambda: consul.in_flight[DB_URL_PATH] == 1, what="the blocking read")
        moved_to = consul.index + 1
        consul.wake()  # the blocking read returns, with the same value
        # The next blocking read is on the new index: the answer was stored (or not) before it.
        eventually(
            lambda: any(r.params.get("index") == str(moved_to) for r in consul.reads(DB_URL_PATH)),
            what="the next blocking read",
        )
        assert reports.seen == [frozenset({DB_URL})]


def test_a_dependency_wanted_while_the_watch_is_starting_is_watched(consul, watcher):
    # run() (the consumer thread) starts the event loop; want() on another thread at that moment
    # must not be lost. The gate holds the loop thread at its start, as a busy machine may.
    gate = threading.Event()
    serve = watcher._serve

    def slow_start(started: threading.Event) -> None:
        gate.wait(10)
        serve(started)

    watcher._serve = slow_start  # type: ignore[method-assign]
    with Reports(watcher):
        eventually(lambda: watcher._thread is not None, what="run() to start the loop thread")
        watcher.want("templates", [WEB])
        gate.set()
        assert watcher.wait_for([WEB], timeout=3), "the query wanted during the start was never watched"
        watcher.want("templates", [WEB, DB_URL])  # nor any later want
        assert watcher.wait_for([DB_URL], timeout=3)


def test_a_key_that_does_not_exist_is_a_value_none_not_a_failed_read(consul, watcher):
    watcher.want("templates", [Query(KEY, "app/missing")])
    eventually(lambda: Query(KEY, "app/missing") in watcher.data(), what="the key's answer")
    assert watcher.data()[Query(KEY, "app/missing")] is None
    assert all(s.failures == 0 for s in watcher.sources())


def test_a_failed_read_keeps_the_last_good_value_and_is_seen_in_the_sources(consul, watcher):
    watcher.want("templates", [DB_URL])
    eventually(lambda: consul.in_flight[DB_URL_PATH] == 1, what="the blocking read")
    consul.statuses[DB_URL_PATH] = 500
    consul.set(DB_URL_PATH, kv_body("app/db_url", "postgres://b"))
    (source,) = watcher.sources()
    eventually(lambda: source.failures >= 1, what="the failed read")
    assert "500" in source.last_error
    assert watcher.data()[DB_URL] == "postgres://a"  # unknown, never empty: the last good value stays
    del consul.statuses[DB_URL_PATH]
    eventually(lambda: watcher.data()[DB_URL] == "postgres://b", what="the read to work again")
    eventually(lambda: source.failures == 0, what="the source to recover")


def test_wait_for_says_whether_every_query_has_a_value(consul, watcher):
    watcher.want("templates", [WEB, DB_URL])
    assert watcher.wait_for([WEB, DB_URL], timeout=10)
    consul.silent.add("/v1/kv/app/hung")
    watcher.want("templates", [Query(KEY, "app/hung")])
    assert not watcher.wait_for([Query(KEY, "app/hung")], timeout=0.2)


# -- the connection budget (pure: no query is started) ----------------------------------------------


def budget(max_conns: int) -> Watcher:
    return Watcher(Settings(watch=Watch(max_conns=max_conns)))


def services(*names: str) -> List[Query]:
    return [Query(SERVICE, n) for n in names]


def keys(*names: str) -> List[Query]:
    return [Query(KEY, n) for n in names]


def test_within_the_budget_every_dependency_has_its_own_blocking_query():
    wanted = frozenset([*services("a", "b"), *keys("k1", "k2"), Query(SERVICES), Query(NODE)])
    assert budget(6)._assign(wanted) == (wanted, frozenset(), frozenset())


def test_past_the_budget_one_connection_is_kept_for_the_catalog_watch_and_services_overflow_to_it():
    wanted = frozenset([*services("a", "b", "c", "d", "e"), *keys("k1")])
    direct, polled, overflow = budget(4)._assign(wanted)
    assert direct == {Query(KEY, "k1"), *services("a", "b")}  # non-service first, then services by name
    assert polled == frozenset()
    assert overflow == {"c", "d", "e"}
    assert len(direct) + 1 == 4  # the catalog watch's connection


def test_non_service_dependencies_beyond_the_budget_are_polled_on_one_more_kept_connection():
    wanted = frozenset([*keys("k1", "k2", "k3", "k4"), Query(PREFIX, "app/"), *services("a")])
    direct, polled, overflow = budget(4)._assign(wanted)
    assert direct == {Query(KEY, "k1"), Query(KEY, "k2")}  # in Query order: by kind, then name
    assert polled == {Query(KEY, "k3"), Query(KEY, "k4"), Query(PREFIX, "app/")}
    assert overflow == {"a"}
    assert len(direct) + 2 == 4  # one connection for the catalog watch, one for the polls


def test_a_service_already_blocking_keeps_its_slot_when_a_new_one_comes_past_the_budget():
    watcher = budget(3)
    running = services("m", "n", "o")
    watcher._tasks = {q: (None, False) for q in running}  # type: ignore[misc]
    direct, _, overflow = watcher._assign(frozenset([*running, Query(SERVICE, "a")]))
    assert direct == {Query(SERVICE, "m"), Query(SERVICE, "n")}
    assert overflow == {"a", "o"}


def test_services_past_the_budget_get_their_values_through_the_catalog_watch_within_it(consul):
    def summary(name: str, count: int) -> Dict[str, Any]:
        return {"Name": name, "InstanceCount": count, "ChecksPassing": count}

    consul.set("/v1/health/service/cache", web_body("10.0.0.9"))
    consul.set("/v1/health/service/db", web_body("10.0.0.8"))
    consul.set("/v1/internal/ui/services", [summary("cache", 1), summary("db", 1), summary("web", 1)])
    settings = Settings(
        consul_http=ConsulHTTP(addr=consul.addr), watch=Watch(wait_min=0.0, wait_max=0.0, max_conns=2)
    )
    watcher = Watcher(settings)
    try:
        wanted = services("cache", "db", "web")
        watcher.want("routes", wanted)
        assert watcher.wait_for(wanted, timeout=10)
        assert watcher.overflow() == {"db", "web"}  # one connection for cache, one for the catalog watch
        assert watcher.watched() == set(wanted)
        eventually(lambda: consul.in_flight["/v1/internal/ui/services"] == 1, what="the catalog watch")
        consul.set(WEB_PATH, web_body("10.0.0.1", "10.0.0.2"))
        consul.set("/v1/internal/ui/services", [summary("cache", 1), summary("db", 1), summary("web", 2)])
        eventually(lambda: addresses(watcher) == ["10.0.0.1", "10.0.0.2"], what="web's new instances")
        assert watcher.counters.peak_open <= 2 and consul.peak_open <= 2
    finally:
        watcher.close()


def test_closing_the_watcher_gives_back_every_connection_and_its_thread(consul, watcher):
    watcher.want("templates", [WEB, DB_URL, OTHER])
    eventually(
        lambda: consul.in_flight[OTHER_PATH] == 1 and consul.in_flight[WEB_PATH] == 1, what="blocking reads"
    )
    assert watch_threads() == 1
    watcher.close()
    assert watch_threads() == 0
    eventually(lambda: consul.open == 0, what="every connection closed")
    watcher.want("templates", [WEB])  # after close: ignored, nothing starts again
    assert watch_threads() == 0
