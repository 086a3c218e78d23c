"""The plan, without HAProxy: which runtime commands bring the running servers to a new config.

Each case is a live config, a candidate and `show servers state` as HAProxy would answer it; the
plan is what apply then sends, word for word.
"""

from __future__ import annotations

from typing import Dict

import pytest

from basenode.output.haproxy.errors import NeedReload
from basenode.output.haproxy.parse import parse_config
from basenode.output.haproxy.plan import (
    ADDED,
    ADDR,
    EMPTY,
    REMOVABLE,
    Command,
    Removal,
    answer_ok,
    busy,
    changed_backends,
    deleted,
    plan_changes,
    removal_steps,
    verify,
)
from basenode.output.haproxy.runtime import ADMIN_FMAINT, ServersState, ServerState

CONFIG = """global
    stats socket /run/basenode/haproxy.sock mode 600 level admin

frontend web
    bind 127.0.0.1:9302
    default_backend web

backend web
    balance roundrobin
{web}
backend db
    balance roundrobin
{db}"""


def config(web=(), db=()) -> str:
    return CONFIG.format(web="".join(f"    {s}\n" for s in web), db="".join(f"    {s}\n" for s in db))


def state(backend: str, name: str, endpoint: str, weight: int = 1, admin: int = 0) -> ServerState:
    address, _, port = endpoint.rpartition(":")
    return ServerState(backend, name, address, int(port), 2, admin, weight)


def running(*states: ServerState) -> ServersState:
    result: Dict[str, Dict[str, ServerState]] = {"web": {}, "db": {}}
    for s in states:
        result[s.backend][s.name] = s
    return result


A = "server n1_a 10.0.0.5:8080 weight 1"
B = "server n1_b 10.0.0.6:8080 weight 1"


def test_a_new_server_is_added_with_its_line_then_made_ready():
    old, new = parse_config(config([A])), parse_config(config([A, B]))
    plan = plan_changes(old, new, running(state("web", "n1_a", "10.0.0.5:8080")))
    assert plan.commands == (
        Command(("add", "server", "web/n1_b", "10.0.0.6:8080", "weight", "1"), ADDED),
        Command(("set", "server", "web/n1_b", "state", "ready"), EMPTY),
    )
    assert (plan.added, plan.removed, plan.updated, plan.removals) == (("web/n1_b",), (), (), ())


def test_a_server_with_checks_gets_them_enabled_before_traffic():
    line = "server n1_c 10.0.0.7:8080 weight 1 check inter 2s agent-check agent-port 9999"
    plan = plan_changes(parse_config(config()), parse_config(config([line])), running())
    assert [c.words[:2] for c in plan.commands] == [
        ("add", "server"),
        ("enable", "health"),
        ("enable", "agent"),
        ("set", "server"),
    ]


def test_a_removed_server_goes_to_maintenance_and_is_deleted_after():
    old, new = parse_config(config([A, B])), parse_config(config([A]))
    live = running(state("web", "n1_a", "10.0.0.5:8080"), state("web", "n1_b", "10.0.0.6:8080"))
    plan = plan_changes(old, new, live)
    assert plan.commands == (Command(("set", "server", "web/n1_b", "state", "maint"), EMPTY),)
    assert plan.removals == (Removal("web", "n1_b", fresh=True),)
    assert plan.removed == ("web/n1_b",)


def test_a_server_left_draining_by_an_earlier_apply_is_only_deleted():
    old = new = parse_config(config([A]))
    live = running(
        state("web", "n1_a", "10.0.0.5:8080"), state("web", "n1_b", "10.0.0.6:8080", admin=ADMIN_FMAINT)
    )
    plan = plan_changes(old, new, live)
    assert (plan.commands, plan.removals, plan.removed) == ((), (Removal("web", "n1_b", fresh=False),), ())
    assert not plan.any()


def test_a_new_address_port_or_weight_is_set_in_place():
    old = parse_config(config([A]))
    new = parse_config(config(["server n1_a 10.0.0.9:9090 weight 3"]))
    plan = plan_changes(old, new, running(state("web", "n1_a", "10.0.0.5:8080")))
    assert plan.commands == (
        Command(("set", "server", "web/n1_a", "addr", "10.0.0.9", "port", "9090"), ADDR),
        Command(("set", "weight", "web/n1_a", "3"), EMPTY),
    )
    assert plan.updated == ("web/n1_a",)


def test_a_server_coming_back_while_it_drains_is_made_ready_again():
    old, new = parse_config(config()), parse_config(config([A]))
    plan = plan_changes(old, new, running(state("web", "n1_a", "10.0.0.5:8080", admin=ADMIN_FMAINT)))
    assert plan.commands == (Command(("set", "server", "web/n1_a", "state", "ready"), EMPTY),)
    assert plan.updated == ("web/n1_a",)


def test_changed_options_or_a_host_name_need_a_reload():
    old = parse_config(config([A]))
    live = running(state("web", "n1_a", "10.0.0.5:8080"))
    with pytest.raises(NeedReload, match="options changed"):
        plan_changes(old, parse_config(config([A + " maxconn 10"])), live)
    with pytest.raises(NeedReload, match="web/n1_h"):
        plan_changes(old, parse_config(config([A, "server n1_h db.example:80 weight 1"])), live)


def test_an_unchanged_line_the_runtime_api_cannot_make_is_left_to_the_config():
    hosted = "server n1_h db.example:80 weight 1"
    old, new = parse_config(config([hosted])), parse_config(config([hosted, A]))
    plan = plan_changes(old, new, running(state("web", "n1_h", "10.9.9.9:80")))
    assert plan.added == ("web/n1_a",)


def test_only_the_backends_in_scope_are_looked_at():
    old = parse_config(config([A], db=["server n1_d 10.0.1.1:5432 weight 1"]))
    new = parse_config(config([A, B], db=["server n1_d 10.0.1.1:5432 weight 1"]))
    assert changed_backends(old, new) == ("web",)
    live = running(state("web", "n1_a", "10.0.0.5:8080"))  # db's server missing: out of scope
    assert plan_changes(old, new, live, scope=("web",)).added == ("web/n1_b",)
    assert plan_changes(old, new, live).added == ("web/n1_b", "db/n1_d")


def test_verify_names_what_runs_wrong():
    new = parse_config(config([A]))
    assert verify(new, running(state("web", "n1_a", "10.0.0.5:8080"))) is None
    assert verify(new, running()) == "web/n1_a is missing"
    assert "weight 2" in (verify(new, running(state("web", "n1_a", "10.0.0.5:8080", weight=2))) or "")
    assert "not ready" in (
        verify(new, running(state("web", "n1_a", "10.0.0.5:8080", admin=ADMIN_FMAINT))) or ""
    )
    extra = running(state("web", "n1_a", "10.0.0.5:8080"), state("web", "n1_x", "10.0.0.8:8080"))
    assert verify(new, extra) == "web/n1_x should be gone but takes traffic"


# What HAProxy answered, recorded: 2.6 from Debian bookworm's 2.6.12 on this machine; 3.x from the
# messages in HAProxy 3.0's and 3.3's source (src/server.c, src/cli.c).
HAPROXY_2_6, HAPROXY_3_0, HAPROXY_3_3 = (2, 6), (3, 0), (3, 3)


def test_on_3_0_and_later_a_removal_waits_for_the_server_to_be_removable_then_deletes_it():
    fresh = Removal("web", "n1_b", fresh=True)
    delete = Command(("del", "server", "web/n1_b"), EMPTY)
    wait = Command(("wait", "480", "srv-removable", "web/n1_b"), REMOVABLE)
    assert removal_steps(fresh, 480, HAPROXY_3_0) == (wait, delete)
    assert removal_steps(fresh, 480, HAPROXY_3_3) == (wait, delete)
    assert removal_steps(fresh, 0, HAPROXY_3_3) == (delete,)  # no time left: one try, kept for later
    assert removal_steps(fresh, 480, HAPROXY_2_6) == (delete,)  # 2.6 has no `wait`: apply polls


def test_answers_read_as_each_version_writes_them():
    changed = (
        "IP changed from '127.0.0.1' to '127.0.0.2', "
        "port changed from '8081' to '8082' by 'stats socket command'"
    )
    same_2_6 = "no need to change the addr, no need to change the port by 'stats socket command'"
    for version in (HAPROXY_2_6, HAPROXY_3_0):
        assert answer_ok(ADDR, changed, version)
        assert answer_ok(ADDR, same_2_6, version)
        assert answer_ok(ADDR, "nothing changed", version)  # 3.0's text for an unchanged address
        assert not answer_ok(ADDR, "Invalid addr 'nowhere'", version)
        assert answer_ok(ADDED, "New server registered.", version)
        assert not answer_ok(
            ADDED, "Backend must use a dynamic load balancing to support dynamic servers.", version
        )
        assert answer_ok(EMPTY, "", version) and not answer_ok(EMPTY, "No such server.", version)
    assert answer_ok(ADDR, "", HAPROXY_3_0)  # 3.0 may answer a successful `set server ... addr` with nothing
    assert not answer_ok(ADDR, "", HAPROXY_2_6)  # 2.6 always says what it did
    assert answer_ok(REMOVABLE, "Done.", HAPROXY_3_0)
    assert not answer_ok(REMOVABLE, "Wait delay expired.", HAPROXY_3_0)
    assert not answer_ok(REMOVABLE, "Only servers in maintenance mode can be deleted.", HAPROXY_3_0)


def test_a_del_server_refusal_is_told_apart_from_a_busy_server():
    assert deleted("Server deleted.") is None
    assert deleted("No such server.") is None  # gone already: what the plan wanted
    busy_reason = deleted("Server still has connections attached to it, cannot remove it.")
    assert busy_reason is not None and busy(busy_reason)
    refused = deleted("Only servers in maintenance mode can be deleted.")
    assert refused is not None and not busy(refused)
