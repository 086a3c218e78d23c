"""What each dependency makes of Consul's answers: validated values, a warning per dropped value, and
a broken answer as a failed read (BadAnswer), never as an empty one."""

from __future__ import annotations

import base64
import copy

import pytest

from basenode.dependency import KEY, NODE, SERVICE, Query, catalog, kv
from basenode.dependency import health_service as hs
from basenode.dependency.answers import BadAnswer, objects, text
from basenode.snapshot import Rejected


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# One element of /v1/health/service/web as Consul 1.15 answers it (trimmed of the fields no one reads).
LOCAL_ENTRY = {
    "Node": {
        "ID": "9b3c5f4e-0c57-4c84-9a47-2a0c7c9b1d3e",
        "Node": "node-1",
        "Address": "10.0.0.1",
        "Datacenter": "dc1",
        "TaggedAddresses": {"lan": "10.0.0.1", "wan": "10.0.0.1"},
        "Meta": {"consul-network-segment": ""},
        "CreateIndex": 13,
        "ModifyIndex": 15,
    },
    "Service": {
        "ID": "web-1",
        "Service": "web",
        "Tags": ["primary"],
        "Address": "10.0.0.5",
        "Meta": {"version": "1.2"},
        "Port": 8080,
        "Weights": {"Passing": 1, "Warning": 1},
        "EnableTagOverride": False,
        "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
        "Connect": {},
        "PeerName": "",
        "CreateIndex": 20,
        "ModifyIndex": 20,
    },
    "Checks": [
        {"Node": "node-1", "CheckID": "serfHealth", "Status": "passing", "ServiceID": "", "PeerName": ""},
        {"Node": "node-1", "CheckID": "service:web-1", "Status": "passing", "ServiceID": "web-1"},
    ],
}


def peered_entry(where: str) -> dict:
    """The same instance as imported from peer cluster `west` (Consul >= 1.14): Node.PeerName and
    Service.PeerName name the peer (`?peer=west` answers so; older fallbacks may mix them in)."""
    entry = copy.deepcopy(LOCAL_ENTRY)
    entry["Service"]["ID"] = "web-west"
    entry["Node"]["Node"] = "node-west"
    if where in ("node", "both"):
        entry["Node"]["PeerName"] = "west"
    if where in ("service", "both"):
        entry["Service"]["PeerName"] = "west"
    if where == "entry":
        entry["PeerName"] = "west"
    return entry


def entry(sid: str, address: str = "10.0.0.5", port=8080, status: str = "passing", tags=()) -> dict:
    result = copy.deepcopy(LOCAL_ENTRY)
    result["Service"].update({"ID": sid, "Address": address, "Port": port, "Tags": list(tags)})
    result["Checks"][1]["Status"] = status
    return result


# -- health_service --------------------------------------------------------------------------------


def test_a_recorded_health_entry_decodes_to_an_instance_with_its_health():
    value, warnings = hs.decode("web", [LOCAL_ENTRY], include_warning=False)
    ((instance, passing),) = value
    assert (instance.id, instance.node, instance.address, instance.port) == (
        "web-1",
        "node-1",
        "10.0.0.5",
        8080,
    )
    assert instance.tags == ("primary",) and instance.meta == (("version", "1.2"),)
    assert passing is True and warnings == []


@pytest.mark.parametrize("where", ["node", "service", "both", "entry"])
def test_an_instance_imported_from_a_peer_cluster_never_enters_local_values(where):
    value, warnings = hs.decode("web", [LOCAL_ENTRY, peered_entry(where)], include_warning=False)
    assert [i.id for i, _ in value] == ["web-1"]
    assert warnings == []  # not hostile, just not ours


def test_an_empty_peer_name_is_a_local_instance():
    assert not hs.from_peer(LOCAL_ENTRY)  # Consul >= 1.14 sends "PeerName": "" for local entries
    assert hs.from_peer(peered_entry("service"))


def test_invalid_instances_are_dropped_with_one_warning_each_and_valid_ones_kept_with_their_health():
    entries = [
        entry("a", "10.0.0.1"),
        entry("b", "10.0.0.2; rm -rf /"),
        entry("c", "10.0.0.3", status="critical"),
        entry("d", port=70000),
        entry("e", tags=("x\nbind :1",)),
        entry("f", status="warning"),
    ]
    value, warnings = hs.decode("web", entries, include_warning=False)
    assert [(i.id, passing) for i, passing in value] == [("a", True), ("c", False), ("f", False)]
    assert len(warnings) == 3
    assert "'b'" in warnings[0] and "neither an IP address nor a host name" in warnings[0]
    assert all(w.startswith("service 'web': dropped instance") for w in warnings)
    wide, _ = hs.decode("web", entries, include_warning=True)
    assert [(i.id, passing) for i, passing in wide] == [("a", True), ("c", False), ("f", True)]


def test_the_instance_address_falls_back_to_the_node_address():
    value, _ = hs.decode("web", [entry("a", address="")], include_warning=False)
    assert value[0][0].address == "10.0.0.1"


def test_instances_are_sorted_by_key_and_one_key_is_one_instance():
    value, _ = hs.decode(
        "web", [entry("b"), entry("a"), entry("b", address="10.0.0.9")], include_warning=False
    )
    assert [(i.id, i.address) for i, _ in value] == [("a", "10.0.0.5"), ("b", "10.0.0.9")]


def test_no_answer_is_no_instances_but_garbage_is_a_failed_read():
    assert hs.decode("web", None, include_warning=False) == ((), [])
    assert hs.decode("web", [], include_warning=False) == ((), [])
    for garbage in ({"web": 1}, "x", [LOCAL_ENTRY, "x"], 7):
        with pytest.raises(BadAnswer):
            hs.decode("web", garbage, include_warning=False)


def test_passing_instances_are_those_a_route_sends_traffic_to():
    value, _ = hs.decode(
        "web",
        [entry("a", tags=("primary",)), entry("b"), entry("c", status="critical", tags=("primary",))],
        False,
    )
    assert [i.id for i in hs.passing_instances(value)] == ["a", "b"]
    assert [i.id for i in hs.passing_instances(value, "primary")] == ["a"]


# -- kv --------------------------------------------------------------------------------------------


def test_a_key_that_does_not_exist_is_none():
    assert kv.decode_key("app/x", None) is None  # the pool answers a 404 with body None


def test_a_key_with_an_empty_value_is_empty_text():
    assert kv.decode_key("app/x", [{"Key": "app/x", "Value": None, "Flags": 0}]) == ""


def test_a_key_gives_its_value_as_utf8_text():
    assert kv.decode_key("app/x", [{"Key": "app/x", "Value": b64("héllo\n".encode())}]) == "héllo\n"


def test_a_value_that_is_not_utf8_is_no_text():
    assert kv.decode_key("app/x", [{"Key": "app/x", "Value": b64(b"\xff\xfe\x00")}]) is None


@pytest.mark.parametrize("value", ["not base64!", 12, ["x"]])
def test_a_value_that_is_not_base64_is_a_failed_read(value):
    with pytest.raises(BadAnswer):
        kv.decode_key("app/x", [{"Key": "app/x", "Value": value}])


def test_an_answer_for_another_key_or_of_another_shape_is_a_failed_read():
    with pytest.raises(BadAnswer, match="another key"):
        kv.decode_key("app/x", [{"Key": "app/y", "Value": None}])
    with pytest.raises(BadAnswer):
        kv.decode_key("app/x", {"Key": "app/x"})


def test_a_prefix_gives_every_key_under_it_and_leaves_out_folders_and_the_prefix_itself():
    body = [
        {"Key": "app/", "Value": None},
        {"Key": "app/a", "Value": b64(b"1")},
        {"Key": "app/sub/", "Value": None},
        {"Key": "app/sub/b", "Value": b64(b"2")},
        {"Key": "app/bin", "Value": b64(b"\xff")},
        {"Key": "app/empty", "Value": None},
    ]
    value = kv.decode_prefix("app/", body)
    assert value == (("app/a", "1"), ("app/bin", None), ("app/empty", None), ("app/sub/b", "2"))
    assert kv.tree("app/", value) == {"a": "1", "sub/b": "2"}


def test_a_prefix_with_no_keys_is_empty_and_an_item_without_a_key_is_a_failed_read():
    assert kv.decode_prefix("app/", None) == ()
    with pytest.raises(BadAnswer):
        kv.decode_prefix("app/", [{"Value": None}])


def test_answers_objects_and_text_are_the_shared_shape_checks():
    assert objects(None, "x") == []
    with pytest.raises(BadAnswer, match="not a list of objects"):
        objects([{}, 1], "x")
    assert text(None) is None and text(b64(b"ok")) == "ok"


# -- catalog ---------------------------------------------------------------------------------------


def test_the_service_list_keeps_valid_names_and_safe_tags_with_a_warning_per_drop():
    value, warnings = catalog.decode_services({"web": ["b", "a", "a"], "bad name": [], "db": ["x\ny", "ok"]})
    assert value == (("db", ("ok",)), ("web", ("a", "b")))
    assert len(warnings) == 2
    with pytest.raises(BadAnswer):
        catalog.decode_services(["web"])


def test_the_node_is_the_agents_name_and_datacenter_with_its_catalog_address():
    name, datacenter = catalog.agent_node({"Config": {"NodeName": "node-1", "Datacenter": "dc1"}})
    value = catalog.decode_node(name, datacenter, {"Node": {"Node": "node-1", "Address": "10.0.0.1"}})
    assert dict(value) == {"name": "node-1", "datacenter": "dc1", "address": "10.0.0.1"}
    with pytest.raises(BadAnswer):
        catalog.agent_node({"Member": {}})
    with pytest.raises(Rejected):
        catalog.decode_node("node-1", "dc1", {"Node": {"Address": "1.2.3.4; rm"}})


def test_a_query_is_its_kind_and_name_and_equal_queries_are_one():
    assert Query(SERVICE, "web") == Query(SERVICE, "web") and len({Query(KEY, "a"), Query(KEY, "a")}) == 1
    assert str(Query(SERVICE, "web")) == "service web" and str(Query(NODE)) == "node"
    with pytest.raises(ValueError, match="unknown dependency kind"):
        Query("sevrice", "web")
