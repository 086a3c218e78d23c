"""Validation of Consul's data: a hostile registration never reaches the config, and costs one warning."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from basenode.config import Route, Settings
from basenode.dependency import health_service
from basenode.snapshot import RouteState, Snapshot, valid_service_name
from basenode.template import render
from tests.conftest import require_binary


def entry(sid="web-1", node="node1", address="10.0.0.5", port=8080, tags=(), meta=None, weight=None):
    service = {"ID": sid, "Service": "web", "Address": address, "Port": port, "Tags": list(tags)}
    if meta is not None:
        service["Meta"] = meta
    if weight is not None:
        service["Weights"] = {"Passing": weight, "Warning": 1}
    return {"Node": {"Node": node, "Address": "10.0.0.1"}, "Service": service, "Checks": []}


def routed_instances(service_name, entries, tag=None):
    """The instances a route to `service_name` gets from these health entries, and the warnings."""
    value, warnings = health_service.decode(service_name, list(entries), include_warning=False)
    return health_service.passing_instances(value, tag), warnings


HOSTILE = {
    "newline and bind in the service id": entry(sid="web-2\n    bind :1"),
    "newline and bind in the node name": entry(node="node2\nbind :1"),
    "newline and bind in a tag": entry(sid="web-3", tags=("primary\nbind :1",)),
    "shell in the address": entry(sid="web-4", address="1.2.3.4; rm"),
    "port 70000": entry(sid="web-5", port=70000),
    "a 1 MB tag": entry(sid="web-6", tags=("x" * 1_000_000,)),
    "a quote in a meta value": entry(sid="web-7", meta={"version": 'v1"'}),
    "weight 1000": entry(sid="web-8", weight=1000),
    # A final newline once passed every check (`$` matches before it).
    "a newline after the service id": entry(sid="web-9\n"),
    "a newline after a host name address": entry(sid="web-10", address="web.example\n"),
    "a newline after a tag": entry(sid="web-11", tags=("primary\n",)),
    # ipaddress takes any text after % in an IPv6 address as its zone index.
    "an IPv6 zone index": entry(sid="web-12", address="fe80::1%eth0"),
    "a newline and a server in an IPv6 zone index": entry(
        sid="web-13", address="fe80::1%x\n    server evil 1.2.3.4:80"
    ),
}


def rendered(instances, tmp_path: Path) -> str:
    settings = Settings(state_dir=tmp_path)
    snapshot = Snapshot((RouteState(Route("web", 9000, "http"), instances),))
    return render.render(render.load_template(render.default_template()), snapshot, settings)


@pytest.mark.parametrize("what", sorted(HOSTILE))
def test_a_hostile_registration_is_dropped_with_one_warning_and_changes_nothing(what, tmp_path):
    good, warnings = routed_instances("web", [entry()])
    assert warnings == []
    with_hostile, warnings = routed_instances("web", [entry(), HOSTILE[what]])
    assert with_hostile == good
    assert len(warnings) == 1
    assert "service 'web': dropped instance" in warnings[0]
    assert len(warnings[0]) < 300  # the 1 MB tag is not copied into the log
    assert rendered(with_hostile, tmp_path) == rendered(good, tmp_path)


def test_every_hostile_registration_at_once_gives_one_warning_each():
    instances, warnings = routed_instances("web", [entry(), *HOSTILE.values()])
    assert [i.id for i in instances] == ["web-1"]
    assert len(warnings) == len(HOSTILE)


def test_a_hostile_service_name_is_not_a_valid_route():
    assert valid_service_name("web.api-2_b")
    assert not valid_service_name("web\nbind :1")
    assert not valid_service_name("x" * 129)
    assert not valid_service_name("")


def test_addresses_are_normalised_and_host_names_accepted():
    instances, warnings = routed_instances(
        "web",
        [entry(sid="a", address="2001:DB8:0::1"), entry(sid="b", address="Db.Example.internal")],
    )
    assert warnings == []
    assert [i.address for i in instances] == ["2001:db8::1", "db.example.internal"]


def test_an_empty_service_address_falls_back_to_the_node_address():
    (instance,), _ = routed_instances("web", [entry(address="")])
    assert instance.address == "10.0.0.1"


def test_the_route_tag_keeps_only_instances_carrying_it():
    instances, warnings = routed_instances(
        "web", [entry(sid="a", tags=("primary",)), entry(sid="b", tags=("replica",))], tag="primary"
    )
    assert [i.id for i in instances] == ["a"]
    assert warnings == []


def test_server_names_are_valid_for_haproxy_even_when_consul_ids_are_not(tmp_path):
    """IDs like `web/1` or `a@b` are fine for Consul but not for HAProxy; one such ID must not fail the
    whole config (which would block every later update)."""
    haproxy_bin = require_binary("haproxy")
    instances, warnings = routed_instances(
        "web",
        [entry(sid="web/1", port=8081), entry(sid="web@1", port=8082), entry(sid="web:1", port=8083)],
    )
    assert warnings == []
    keys = [i.key for i in instances]
    assert len(set(keys)) == 3
    assert "node1_web:1" in keys  # already valid: kept as is
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(rendered(instances, tmp_path))
    proc = subprocess.run([haproxy_bin, "-c", "-f", str(cfg)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_instances_whose_node_and_id_join_to_the_same_name_are_both_kept(tmp_path):
    """Node `n` with ID `a_b` and node `n_a` with ID `b` both joined to the server name `n_a_b`: one of
    the two valid instances was silently dropped."""
    one, other = (
        entry(sid="a_b", node="n", address="10.0.0.5"),
        entry(sid="b", node="n_a", address="10.0.0.6"),
    )
    instances, warnings = routed_instances("web", [one, other])
    assert warnings == []
    assert sorted((i.node, i.id) for i in instances) == [("n", "a_b"), ("n_a", "b")]
    assert len({i.key for i in instances}) == 2
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(rendered(instances, tmp_path))
    proc = subprocess.run(
        [require_binary("haproxy"), "-c", "-f", str(cfg)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
