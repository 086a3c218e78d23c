"""A route's datacenter and failover datacenters: how they are written, what they read, what renders."""

from __future__ import annotations

import pytest

from basenode import config
from basenode.config import ConfigError, Route, Settings, Watch
from basenode.dependency import KEY, SERVICE, Query
from basenode.output import haproxy
from basenode.routes import ROUTES_QUERY, build_snapshot, parse_kv_route, route_queries
from basenode.snapshot import Instance
from basenode.template import render
from basenode.template.functions import render_template
from basenode.watch import Watcher
from tests.conftest import require_binary

P = "basenode/routes/"
TEMPLATE = render.load_template(render.default_template(), single_line=True)


def health(*instances: Instance, passing: bool = True) -> tuple:
    return tuple((i, passing) for i in instances)


def test_datacenter_and_failover_from_the_file_the_flag_and_kv_are_the_same(tmp_path):
    from tests.unit.test_config import load_file

    (from_file,) = load_file(
        tmp_path, '[routes.web]\nport = 9302\ndatacenter = "dc1"\nfailover = ["dc2", "dc3"]\n'
    ).routes
    flags = config.Flags(no_consul=True, no_haproxy=True, routes="web:9302;dc=dc1;failover=dc2+dc3")
    (from_flag,) = config.load(flags, {}).routes
    from_kv = parse_kv_route(P + "web", "9302 dc=dc1 failover=dc2,dc3")
    for route in (from_file, from_flag, from_kv):
        assert (route.datacenter, route.failover) == ("dc1", ("dc2", "dc3"))


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("9302 failover=dc2+dc2", 'failover="dc2+dc2"'),
        ("9302 dc=dc2 failover=dc2", 'failover="dc2"'),
        ("9302 failover=dc#2", 'failover="dc#2"'),
        ("9302 failover=a+b+c+d+e+f", 'failover="a+b+c+d+e+f"'),
        ("9302 dc=dc.2", 'dc="dc.2"'),
        ("9302 dc=a datacenter=b", 'dc="a"'),
    ],
)
def test_a_bad_datacenter_or_failover_list_names_the_route_the_option_and_the_value(value, shown):
    with pytest.raises(ConfigError) as e:
        parse_kv_route(P + "web", value)
    assert f"{P}web" in str(e.value) and f"option {shown}" in str(e.value)


def test_a_route_reads_its_own_datacenter_and_each_failover_datacenter():
    route = Route("web", 9302, datacenter="dc1", failover=("dc2", "dc3"))
    assert route_queries([route]) == {
        ROUTES_QUERY,
        Query(SERVICE, "web", "dc1"),
        Query(SERVICE, "web", "dc2"),
        Query(SERVICE, "web", "dc3"),
    }
    assert route_queries([Route("db", 9301)]) == {ROUTES_QUERY, Query(SERVICE, "db")}


def test_the_backups_are_the_first_failover_datacenter_with_healthy_instances():
    route = Route("web", 9302, failover=("dc2", "dc3"))
    local = Instance("a", "n1", "10.0.0.1", 80)
    data = {
        Query(SERVICE, "web"): health(local),
        Query(SERVICE, "web", "dc2"): health(Instance("b", "n2", "10.1.0.1", 80), passing=False),
        Query(SERVICE, "web", "dc3"): health(
            Instance("a", "n1", "10.2.0.2", 80), Instance("c", "n3", "10.2.0.1", 80)
        ),
    }
    (state,) = build_snapshot([route], data).routes
    assert state.instances == (local,)
    assert state.backup_datacenter == "dc3"
    assert [b.key for b in state.backups] == ["dc3:n1_a", "dc3:n3_c"]  # apart from the local n1_a
    data[Query(SERVICE, "web", "dc2")] = health(Instance("b", "n2", "10.1.0.1", 80))
    (state,) = build_snapshot([route], data).routes
    assert (state.backup_datacenter, [b.key for b in state.backups]) == ("dc2", ["dc2:n2_b"])
    (state,) = build_snapshot([route], {Query(SERVICE, "web"): health(local)}).routes
    assert (state.backups, state.backup_datacenter) == ((), None)  # failover not read yet: no backups


def test_backups_render_as_backup_servers_haproxy_accepts_and_the_runtime_api_can_add(tmp_path):
    route = parse_kv_route(P + "web", "9302/http failover=dc2 maxconn=5")
    data = {
        Query(SERVICE, "web"): health(Instance("a", "n1", "10.0.0.1", 80)),
        Query(SERVICE, "web", "dc2"): health(Instance("b", "n2", "10.1.0.1", 80)),
    }
    snapshot = build_snapshot([route], data)
    text = render.render_context(TEMPLATE, render.context(snapshot, Settings(state_dir=tmp_path)))
    assert "    option allbackups" in text
    assert "    server n1_a 10.0.0.1:80 weight 1 maxconn 5" in text
    assert "    server dc2:n2_b 10.1.0.1:80 weight 1 backup maxconn 5" in text
    (tmp_path / "c.cfg").write_text(text)
    haproxy.check(require_binary("haproxy"), tmp_path / "c.cfg")
    backup = haproxy.parse_config(text).servers["web"]["dc2:n2_b"]
    assert backup.runtime_ok and "backup" in backup.options
    plain = render.render_context(
        TEMPLATE,
        render.context(build_snapshot([Route("web", 9302, "http")], data), Settings(state_dir=tmp_path)),
    )
    assert "allbackups" not in plain and "backup" not in plain.split("defaults", 1)[1]


def test_services_of_other_datacenters_never_ride_on_the_local_catalog_watch():
    watcher = Watcher(Settings(watch=Watch(max_conns=3)))
    wanted = frozenset(
        [
            Query(SERVICE, "a"),
            Query(SERVICE, "b"),
            Query(SERVICE, "a", "dc2"),
            Query(SERVICE, "b", "dc2"),
            Query(KEY, "k"),
        ]
    )
    direct, polled, overflow = watcher._assign(wanted)
    assert overflow <= {"a", "b"}  # service names of the local datacenter only
    assert {Query(SERVICE, "a", "dc2"), Query(SERVICE, "b", "dc2")} <= direct | polled


def test_service_in_a_template_takes_a_datacenter(tmp_path):
    path = tmp_path / "t.j2"
    path.write_text("{% for i in service('web', datacenter='dc2') %}{{ i.endpoint }}{% endfor %}\n")
    template = render.load_template(path)
    dc2 = Query(SERVICE, "web", "dc2")
    first = render_template(template, {Query(SERVICE, "web"): health(Instance("a", "n1", "10.0.0.1", 80))})
    assert first.missing == {dc2}  # the other datacenter's read, not the local one
    second = render_template(template, {dc2: health(Instance("b", "n2", "10.1.0.1", 80))})
    assert second.text == "10.1.0.1:80"
