"""The catalog-wide watch (watch.catalog.CatalogView): which reads it makes for which change, and which
summaries count as ours (pure logic: a fake pool answers from a scripted catalog)."""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

from basenode.consul_async import Answer
from basenode.dependency.answers import BadAnswer
from basenode.watch.catalog import (
    DUMP_PATH,
    SUMMARIES_PATH,
    CatalogView,
    changed_local_names,
    summaries_by_key,
)

HEALTH = "/v1/health/service/"


def instance(sid: str, address: str = "10.0.0.5", port: int = 80) -> Dict[str, Any]:
    return {"ID": sid, "Address": address, "Port": port}


class FakePool:
    """A catalog of per-service summaries and instances, answering as Consul's endpoints do; records
    every read the view makes as (what, wait)."""

    def __init__(self) -> None:
        self.index = 10
        self.summaries: Dict[Tuple[str, str], Dict[str, Any]] = {
            ("", "web"): {"Name": "web", "InstanceCount": 1},
            ("", "db"): {"Name": "db", "InstanceCount": 1},
        }
        self.instances: Dict[str, List[Dict[str, Any]]] = {"web": [instance("w1")], "db": [instance("d1")]}
        self.reads: List[Tuple[str, Optional[str]]] = []
        self.now = 0.0

    async def get(
        self, path: str, params: Sequence[Tuple[str, str]] = (), wait_seconds: Optional[float] = None
    ) -> Answer:
        query = dict(params)
        if path == SUMMARIES_PATH:
            self.reads.append(("summary", query.get("wait")))
            body: Any = [dict(s) for s in self.summaries.values()]
        elif path == DUMP_PATH:
            self.reads.append(("dump", None))
            body = [
                {
                    "Node": "n1",
                    "Address": "10.0.0.1",
                    "Services": [
                        {**i, "Service": name} for name, items in self.instances.items() for i in items
                    ],
                    "Checks": [],
                }
            ]
        elif path.startswith(HEALTH):
            name = urllib.parse.unquote(path[len(HEALTH) :])
            self.reads.append(("service", name))
            body = [self.health_entry(name, i) for i in self.instances.get(name, [])]
        else:
            raise AssertionError(f"unexpected read of {path}")
        return Answer(200, self.index, body)

    @staticmethod
    def health_entry(name: str, item: Dict[str, Any]) -> Dict[str, Any]:
        return {
            "Node": {"Node": "n1", "Address": "10.0.0.1"},
            "Service": {**item, "Service": name},
            "Checks": [],
        }

    def view(self, services: Sequence[str] = ("db", "web"), **kwargs: Any) -> CatalogView:
        return CatalogView(self, frozenset(services), False, clock=lambda: self.now, **kwargs)  # type: ignore[arg-type]

    def change(
        self, service: str, items: List[Dict[str, Any]], summary: Optional[Dict[str, Any]], peer: str = ""
    ) -> None:
        self.index += 1
        if summary is None:
            self.summaries.pop((peer, service), None)
        else:
            self.summaries[(peer, service)] = {
                "Name": service,
                **summary,
                **({"PeerName": peer} if peer else {}),
            }
        if not peer:
            self.instances[service] = items


def read(view: CatalogView, index: int, wait: Optional[str] = None, seconds: Optional[float] = None):
    return asyncio.run(view.read(index, wait, seconds))


def ids(values: Dict[str, Any], name: str) -> List[str]:
    return [i.id for i, _ in values[name]]


def test_the_first_read_is_the_summary_then_each_of_a_few_services():
    cat = FakePool()
    index, values, warnings = read(cat.view(), 0)
    assert index == 10 and ids(values, "web") == ["w1"] and ids(values, "db") == ["d1"]
    assert cat.reads == [("summary", None), ("service", "db"), ("service", "web")]
    assert warnings == []


def test_the_first_read_of_many_services_is_one_full_dump():
    cat = FakePool()
    _, values, _ = read(cat.view(max_targeted=1), 0)
    assert [kind for kind, _ in cat.reads] == ["summary", "dump"]
    assert ids(values, "web") == ["w1"] and ids(values, "db") == ["d1"]


def test_a_change_the_summary_shows_reads_only_that_service():
    cat = FakePool()
    view = cat.view()
    index, _, _ = read(view, 0)
    cat.change("web", [instance("w1"), instance("w2", "10.0.0.6")], {"InstanceCount": 2})
    cat.reads.clear()
    index, values, _ = read(view, index, "300s", 300.0)
    assert cat.reads == [("summary", "300s"), ("service", "web")]
    assert ids(values, "web") == ["w1", "w2"] and ids(values, "db") == ["d1"]
    assert index == 11


def test_a_change_the_summary_cannot_show_reads_everything():
    cat = FakePool()
    view = cat.view()
    index, _, _ = read(view, 0)
    cat.change("web", [instance("w1", port=2)], {"InstanceCount": 1})  # same summary, new port
    cat.reads.clear()
    _, values, _ = read(view, index, "300s", 300.0)
    assert cat.reads == [("summary", "300s"), ("service", "db"), ("service", "web")]
    assert values["web"][0][0].port == 2


def test_a_wait_that_ran_out_costs_no_read_but_the_summary():
    cat = FakePool()
    view = cat.view()
    index, first, _ = read(view, 0)
    cat.reads.clear()
    again, values, _ = read(view, index, "300s", 300.0)
    assert again == index and values == first and cat.reads == [("summary", "300s")]


def test_a_service_that_leaves_the_catalog_has_no_instances():
    cat = FakePool()
    view = cat.view()
    index, _, _ = read(view, 0)
    cat.change("db", [], None)
    _, values, _ = read(view, index, "300s", 300.0)
    assert values["db"] == () and ids(values, "web") == ["w1"]


def test_after_targeted_reads_a_full_read_follows_within_the_reconcile_delay():
    cat = FakePool()
    view = cat.view(reconcile_after=5.0)
    index, _, _ = read(view, 0)
    cat.change("web", [instance("w2")], {"InstanceCount": 2})
    index, _, _ = read(view, index, "300s", 300.0)
    cat.instances["db"] = [instance("hidden")]  # a change that rode along, invisible in the summary
    cat.now = 1.0
    cat.reads.clear()
    index, values, _ = read(view, index, "300s", 300.0)  # nothing moves: the wait is cut to the delay
    assert cat.reads == [("summary", "4000ms")]
    assert ids(values, "db") == ["d1"]
    cat.now = 5.0
    cat.reads.clear()
    _, values, _ = read(view, index, "300s", 300.0)
    assert cat.reads == [("summary", None), ("service", "db"), ("service", "web")]
    assert ids(values, "db") == ["hidden"]
    assert view.reconcile_at is None


def test_many_changed_services_at_once_are_one_full_read():
    cat = FakePool()
    names = [f"s{i}" for i in range(4)]
    view = cat.view(("db", "web", *names), max_targeted=3)
    index, _, _ = read(view, 0)
    for name in names:
        cat.change(name, [instance(name)], {"InstanceCount": 1})
    cat.reads.clear()
    _, values, _ = read(view, index, "300s", 300.0)
    assert [kind for kind, _ in cat.reads] == ["summary", "dump"]
    assert ids(values, "s3") == ["s3"]


def test_an_index_that_went_backwards_is_one_full_read():
    cat = FakePool()
    view = cat.view()
    read(view, 0)
    cat.summaries[("", "web")] = {"Name": "web", "InstanceCount": 5}
    cat.reads.clear()
    index, _, _ = read(view, 50, "300s", 300.0)  # the loop last saw 50; the catalog is at 10 now
    assert cat.reads == [("summary", "300s"), ("service", "db"), ("service", "web")]
    assert index == 10


def test_a_change_to_a_peers_service_of_the_same_name_reads_none_of_ours():
    cat = FakePool()
    cat.summaries[("west", "web")] = {"Name": "web", "InstanceCount": 3, "PeerName": "west"}
    view = cat.view()
    index, _, _ = read(view, 0)
    cat.change("web", [], {"InstanceCount": 4}, peer="west")
    cat.reads.clear()
    index, values, _ = read(view, index, "300s", 300.0)
    assert cat.reads == [("summary", "300s")]  # our web's summary did not change: no read of it
    assert ids(values, "web") == ["w1"] and index == 11


# -- summaries: which count as ours ----------------------------------------------------------------


def summary(name: str, count: int, **where: str) -> Dict[str, Any]:
    return {"Name": name, "InstanceCount": count, **where}


def test_summaries_of_one_name_from_different_peers_and_namespaces_do_not_collide():
    body = [
        summary("web", 1),
        summary("web", 2, PeerName="west"),
        summary("web", 3, Namespace="team-a"),
        summary("web", 4, Partition="part-b", Namespace="default"),
    ]
    by_key = summaries_by_key(body)
    assert len(by_key) == 4
    assert by_key[("", "", "", "web")]["InstanceCount"] == 1
    assert by_key[("west", "", "", "web")]["InstanceCount"] == 2
    assert by_key[("", "", "team-a", "web")]["InstanceCount"] == 3
    assert by_key[("", "part-b", "default", "web")]["InstanceCount"] == 4


@pytest.mark.parametrize(
    ("where", "ours"),
    [
        ({}, True),
        ({"Namespace": "default", "Partition": "default"}, True),
        ({"Namespace": "", "Partition": ""}, True),
        ({"PeerName": "west"}, False),
        ({"Namespace": "team-a"}, False),
        ({"Partition": "part-b"}, False),
    ],
)
def test_only_local_summaries_of_the_default_namespace_and_partition_count_as_ours(where, ours):
    old = summaries_by_key([summary("web", 1), summary("web", 1, **where)] if where else [summary("web", 1)])
    new = summaries_by_key([summary("web", 1), summary("web", 2, **where)] if where else [summary("web", 2)])
    names, any_changed = changed_local_names(old, new)
    assert any_changed
    assert names == ({"web"} if ours else set())


def test_a_service_that_appears_or_leaves_is_a_changed_name():
    old = summaries_by_key([summary("web", 1)])
    new = summaries_by_key([summary("db", 1)])
    assert changed_local_names(old, new) == (frozenset({"web", "db"}), True)
    assert changed_local_names(old, old) == (frozenset(), False)


def test_a_summary_without_a_name_is_left_out_and_garbage_is_a_failed_read():
    assert list(summaries_by_key([{"InstanceCount": 1}, summary("web", 1)])) == [("", "", "", "web")]
    with pytest.raises(BadAnswer):
        summaries_by_key({"web": 1})
