"""Dependency bookkeeping: one query in flight per dependency, unused ones stop, changes are reported.

The reads are scripted long polls (pure logic, no Consul): each blocks until its value changes, as a
Consul blocking query does. The real agent is exercised in tests/integration/test_templates.py.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

import pytest

from basenode.config import Settings, Watch
from basenode.deps import DependencyWatcher, prefix_value, service_value
from basenode.templates import KEY, SERVICE, Query
from tests.support.waiting import eventually

WEB = Query(SERVICE, "web")
DB_URL = Query(KEY, "app/db_url")
OTHER = Query(KEY, "app/other")


class ScriptedConsul:
    """Long polls over a dict of values: a read with an index waits until the version passes it."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.version = 1
        self.values: Dict[Query, Any] = {}
        self.readers: Counter = Counter()  # readers made per query (one per thread)
        self.in_flight: Counter = Counter()  # reads waiting right now, per query

    def set(self, query: Query, value: Any) -> None:
        with self.cond:
            self.values[query] = value
            self.version += 1
            self.cond.notify_all()

    def wake_all(self) -> None:
        """As if every long poll's `wait` ran out."""
        self.set(Query(KEY, "unrelated"), self.version)

    def reader(self, query: Query, client: Any):
        self.readers[query] += 1

        def read(index: int, wait: Optional[str]) -> Tuple[int, Any]:
            with self.cond:
                self.in_flight[query] += 1
                try:
                    self.cond.wait_for(lambda: self.version > index, timeout=30)
                finally:
                    self.in_flight[query] -= 1
                return self.version, self.values.get(query)

        return read


@pytest.fixture
def scripted():
    fake = ScriptedConsul()
    watcher = DependencyWatcher(
        Settings(watch=Watch(wait_min=0.0, wait_max=0.0)),
        make_client=lambda: None,
        make_reader=fake.reader,
    )
    yield fake, watcher
    watcher.close()
    fake.wake_all()


def test_wanting_a_dependency_twice_keeps_one_query_for_it(scripted):
    fake, watcher = scripted
    fake.set(WEB, ("a",))
    watcher.want([WEB, DB_URL])
    watcher.want([WEB, DB_URL, WEB])
    eventually(lambda: fake.in_flight[WEB] == 1 and fake.in_flight[DB_URL] == 1, what="both long polls")
    assert fake.readers == Counter({WEB: 1, DB_URL: 1})
    assert watcher.threads() == 2
    assert watcher.data()[WEB] == ("a",)


def test_a_dependency_no_longer_wanted_stops_being_watched_and_leaves_the_cache(scripted):
    fake, watcher = scripted
    fake.set(DB_URL, "postgres://a")
    watcher.want([WEB, DB_URL])
    eventually(lambda: DB_URL in watcher.data(), what="the key's first value")
    watcher.want([WEB])
    assert watcher.watched() == frozenset({WEB})
    fake.wake_all()  # its long poll returns: the thread sees it is not wanted and ends
    eventually(lambda: watcher.threads() == 1, what="the unused query's thread to end")
    assert DB_URL not in watcher.data()
    assert fake.in_flight[DB_URL] == 0


def test_wanted_again_before_its_thread_noticed_the_same_query_carries_on(scripted):
    fake, watcher = scripted
    watcher.want([DB_URL])
    eventually(lambda: fake.in_flight[DB_URL] == 1, what="the long poll")
    watcher.want([])
    watcher.want([DB_URL])
    fake.wake_all()
    eventually(lambda: fake.in_flight[DB_URL] == 1, what="the next long poll")
    assert fake.readers[DB_URL] == 1
    assert watcher.watched() == frozenset({DB_URL})


def test_changes_are_reported_with_the_queries_that_changed(scripted):
    fake, watcher = scripted
    seen: List[FrozenSet[Query]] = []
    stop = threading.Event()
    runner = threading.Thread(target=watcher.run, args=(seen.append, stop), daemon=True)
    runner.start()
    try:
        watcher.want([WEB, DB_URL, OTHER])
        eventually(lambda: len(watcher.data()) == 3, what="first values")
        eventually(lambda: set().union(*seen) == {WEB, DB_URL, OTHER}, what="first values reported")
        seen.clear()
        fake.set(DB_URL, "postgres://b")
        eventually(lambda: seen and seen[-1] == frozenset({DB_URL}), what="the one change reported")
        assert watcher.data()[DB_URL] == "postgres://b"
    finally:
        stop.set()
        runner.join(5)


def test_an_unchanged_answer_is_not_a_change(scripted):
    fake, watcher = scripted
    fake.set(DB_URL, "same")
    seen: List[FrozenSet[Query]] = []
    stop = threading.Event()
    runner = threading.Thread(target=watcher.run, args=(seen.append, stop), daemon=True)
    runner.start()
    try:
        watcher.want([DB_URL])
        eventually(lambda: seen, what="the first value")
        fake.wake_all()  # the long poll returns with the same value
        fake.set(OTHER, "x")
        eventually(lambda: fake.in_flight[DB_URL] == 1 and fake.version >= 4, what="the next poll")
        assert seen == [frozenset({DB_URL})]
    finally:
        stop.set()
        runner.join(5)


def entry(service_id: str, address: str, status: str = "passing", tags=()) -> Dict[str, Any]:
    return {
        "Node": {"Node": "n1", "Address": "127.0.0.1"},
        "Service": {"ID": service_id, "Service": "web", "Address": address, "Port": 80, "Tags": list(tags)},
        "Checks": [{"CheckID": f"c-{service_id}", "Status": status}],
    }


def test_service_values_are_validated_as_in_discovery_and_keep_their_health():
    entries = [entry("a", "10.0.0.1"), entry("b", "10.0.0.2; rm -rf /"), entry("c", "10.0.0.3", "critical")]
    value, warnings = service_value("web", entries, include_warning=False)
    assert [(i.id, passing) for i, passing in value] == [("a", True), ("c", False)]
    assert (
        len(warnings) == 1 and "'b'" in warnings[0] and "neither an IP address nor a host name" in warnings[0]
    )


def test_a_tree_leaves_out_folders_the_prefix_itself_and_values_that_are_not_text():
    values = {"app/": None, "app/a": "1", "app/sub/": None, "app/sub/b": "2", "app/bin": None}
    assert prefix_value("app/", values) == (("app/a", "1"), ("app/sub/b", "2"))
