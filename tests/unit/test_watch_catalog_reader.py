"""Which reads the catalog reader makes for which change (pure logic: the reads are scripted)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from basenode.watch import CatalogReader


class FakeCatalog:
    """A catalog of summaries and entries; records every read the reader makes."""

    def __init__(self) -> None:
        self.index = 10
        self.summary: Dict[str, Any] = {"web": {"InstanceCount": 1}, "db": {"InstanceCount": 1}}
        self.entries: Dict[str, List[Any]] = {"web": [{"id": "w1"}], "db": [{"id": "d1"}]}
        self.reads: List[Tuple[str, Any]] = []
        self.now = 0.0

    def read_summary(self, index: int, wait: Optional[str]) -> Tuple[int, Dict[str, Any]]:
        self.reads.append(("summary", wait))
        return self.index, {k: dict(v) for k, v in self.summary.items()}

    def read_dump(self) -> Dict[str, List[Any]]:
        self.reads.append(("dump", None))
        return {k: list(v) for k, v in self.entries.items()}

    def read_service(self, name: str) -> List[Any]:
        self.reads.append(("service", name))
        return list(self.entries.get(name, []))

    def reader(self, **kwargs: Any) -> CatalogReader:
        return CatalogReader(
            self.read_summary, self.read_dump, self.read_service, clock=lambda: self.now, **kwargs
        )

    def change(self, service: str, entries: List[Any], summary: Optional[Dict[str, Any]]) -> None:
        self.index += 1
        if summary is None:
            self.summary.pop(service, None)
        else:
            self.summary[service] = summary
        self.entries[service] = entries


def test_the_first_read_is_one_full_dump():
    cat = FakeCatalog()
    index, entries = cat.reader().read(0, None)
    assert (index, entries["web"]) == (10, [{"id": "w1"}])
    assert [kind for kind, _ in cat.reads] == ["summary", "dump"]


def test_a_change_the_summary_shows_reads_only_that_service():
    cat = FakeCatalog()
    reader = cat.reader()
    index, _ = reader.read(0, None)
    cat.change("web", [{"id": "w1"}, {"id": "w2"}], {"InstanceCount": 2})
    cat.reads.clear()
    index, entries = reader.read(index, "300s")
    assert cat.reads == [("summary", "300s"), ("service", "web")]
    assert entries["web"] == [{"id": "w1"}, {"id": "w2"}] and entries["db"] == [{"id": "d1"}]


def test_a_change_the_summary_cannot_show_reads_everything():
    cat = FakeCatalog()
    reader = cat.reader()
    index, _ = reader.read(0, None)
    cat.change("web", [{"id": "w1", "port": 2}], {"InstanceCount": 1})  # same summary, new port
    cat.reads.clear()
    _, entries = reader.read(index, "300s")
    assert [kind for kind, _ in cat.reads] == ["summary", "dump"]
    assert entries["web"] == [{"id": "w1", "port": 2}]


def test_a_service_that_leaves_the_catalog_leaves_the_entries():
    cat = FakeCatalog()
    reader = cat.reader()
    index, _ = reader.read(0, None)
    cat.change("db", [], None)
    _, entries = reader.read(index, "300s")
    assert "db" not in entries


def test_after_targeted_reads_a_full_read_follows_within_the_reconcile_delay():
    cat = FakeCatalog()
    reader = cat.reader(reconcile_after=5.0)
    index, _ = reader.read(0, None)
    cat.change("web", [{"id": "w2"}], {"InstanceCount": 2})
    index, _ = reader.read(index, "300s")
    cat.entries["db"] = [{"id": "hidden"}]  # a change that rode along, invisible in the summary
    cat.now = 1.0
    cat.reads.clear()
    index, entries = reader.read(index, "300s")  # nothing moves: the blocking wait is cut to the delay
    assert cat.reads == [("summary", "4s")]
    assert entries["db"] == [{"id": "d1"}]
    cat.now = 5.0
    cat.reads.clear()
    _, entries = reader.read(index, "300s")
    assert [kind for kind, _ in cat.reads] == ["summary", "dump"]
    assert entries["db"] == [{"id": "hidden"}]
    assert reader.reconcile_at is None


def test_many_changed_services_at_once_are_one_full_read():
    cat = FakeCatalog()
    reader = cat.reader(max_targeted=3)
    index, _ = reader.read(0, None)
    for i in range(4):
        cat.change(f"s{i}", [{"id": i}], {"InstanceCount": 1})
    cat.reads.clear()
    reader.read(index, "300s")
    assert [kind for kind, _ in cat.reads] == ["summary", "dump"]


def test_an_index_that_went_backwards_is_one_full_read():
    cat = FakeCatalog()
    reader = cat.reader()
    reader.read(0, None)
    cat.summary["web"] = {"InstanceCount": 5}
    cat.reads.clear()
    reader.read(50, "300s")  # the loop last saw 50; the catalog is at 10 now
    assert [kind for kind, _ in cat.reads] == ["summary", "dump"]
