"""Applying a rendered config to a real HAProxy (master-worker) in front of real loopback HTTP backends.

What users rely on: server changes take effect through the runtime API with no reload (the worker
and the master's reload counter stay the same); structural changes reload seamlessly; a config
HAProxy rejects changes nothing; membership churn under load fails no request.
"""

from __future__ import annotations

import http.client
import os
import socket
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple

import pytest

from basenode.config import Route, Settings, Watch
from basenode.output import haproxy
from basenode.output.haproxy import runtime
from basenode.snapshot import Instance, RouteState, Snapshot
from basenode.template import render
from tests.conftest import require_binary
from tests.support.backends import Backends, Load, get, names_seen
from tests.support.haproxy_proc import CountingHAProxy, HAProxy
from tests.support.ports import free_port
from tests.support.tmpfs import fill, small_tmpfs
from tests.support.waiting import eventually


class Rig:
    """Settings in a temp state dir, named backends, the default template, and HAProxy once started."""

    def __init__(
        self,
        tmp_path: Path,
        backends: Backends,
        apply_mode: str = "runtime",
        haproxy_bin: Optional[str] = None,
    ) -> None:
        self.settings = Settings(
            state_dir=tmp_path,
            haproxy_bin=haproxy_bin or require_binary("haproxy"),
            watch=Watch(apply_mode=apply_mode),
        )
        self.backends = backends
        self.template = render.load_template(render.default_template())
        self.port = free_port()
        self.haproxy: Optional[HAProxy] = None

    def snapshot(
        self, members: Iterable[str], extra_routes: Sequence[Route] = (), weight: int = 1
    ) -> Snapshot:
        instances = tuple(
            Instance(name, "node1", "127.0.0.1", self.backends[name].port, weight=weight)
            for name in sorted(members)
        )
        routes = [RouteState(Route("web", self.port, "http"), instances)]
        routes += [RouteState(route, ()) for route in extra_routes]
        return Snapshot(tuple(sorted(routes, key=lambda r: r.route.service)))

    def apply(self, snapshot: Snapshot, template=None) -> haproxy.ApplyResult:
        text = render.render(template or self.template, snapshot, self.settings)
        return haproxy.apply(self.settings, None, snapshot, text)

    def start(self, members: Iterable[str]) -> HAProxy:
        assert self.apply(self.snapshot(members)).how == "written"
        self.haproxy = HAProxy(self.settings).start()
        return self.haproxy

    def serving(self) -> Tuple[int, int, int]:
        """(master pid, master reload count, current worker pid)."""
        assert self.haproxy is not None
        info = self.haproxy.proc_info()
        return info.master_pid, info.reloads, self.haproxy.worker_pid()


@pytest.fixture
def backends():
    group = Backends()
    for name in ("a", "b", "c", "d"):
        group.start(name)
    yield group
    group.close()


@pytest.fixture
def rig(tmp_path, backends):
    rig = Rig(tmp_path, backends)
    yield rig
    if rig.haproxy is not None:
        rig.haproxy.stop()


def test_server_additions_and_removals_apply_without_any_reload(rig):
    rig.start(["a", "b"])
    before = rig.serving()
    assert eventually(lambda: names_seen(rig.port) == ["a", "b"], what="traffic on a and b")

    result = rig.apply(rig.snapshot(["b"]))
    assert (result.how, result.removed, result.added) == ("runtime", ("web/node1_a",), ())
    assert names_seen(rig.port) == ["b"]

    result = rig.apply(rig.snapshot(["b", "c", "d"]))
    assert (result.how, result.added) == ("runtime", ("web/node1_c", "web/node1_d"))
    assert names_seen(rig.port, requests=30) == ["b", "c", "d"]

    result = rig.apply(rig.snapshot(["a"]))
    assert result.how == "runtime"
    assert names_seen(rig.port) == ["a"]

    assert rig.serving() == before  # same master, no reload, same worker
    assert rig.settings.haproxy_cfg.read_text() == render.render(
        rig.template, rig.snapshot(["a"]), rig.settings
    )


def test_the_same_snapshot_twice_is_unchanged(rig):
    rig.start(["a"])
    assert rig.apply(rig.snapshot(["a"])).how == "unchanged"


def test_a_new_port_or_weight_is_set_in_place(rig):
    rig.start(["a", "b"])
    before = rig.serving()
    moved = rig.backends.start("a2")  # instance "a" moves to a new port
    snapshot = Snapshot(
        (
            RouteState(
                Route("web", rig.port, "http"),
                (
                    Instance("a", "node1", "127.0.0.1", moved.port, weight=3),
                    Instance("b", "node1", "127.0.0.1", rig.backends["b"].port),
                ),
            ),
        )
    )
    result = rig.apply(snapshot)
    assert (result.how, result.updated) == ("runtime", ("web/node1_a",))
    state = haproxy.show_servers_state(rig.settings.haproxy_stats_socket)["web"]["node1_a"]
    assert (state.port, state.weight) == (moved.port, 3)
    assert names_seen(rig.port) == ["a2", "b"]
    assert rig.serving() == before


def test_a_backend_without_instances_answers_503_at_once(rig):
    rig.start([])
    conn = http.client.HTTPConnection("127.0.0.1", rig.port, timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().status == 503
    conn.close()


def test_a_tcp_route_without_instances_closes_the_connection_at_once(rig):
    rig.start(["a"])
    tcp = Route("pg", free_port(), "tcp")
    assert rig.apply(rig.snapshot(["a"], extra_routes=[tcp])).how == "reload"
    with socket.create_connection(("127.0.0.1", tcp.port), timeout=5) as conn:
        conn.sendall(b"hello\n")
        assert conn.recv(100) == b""  # closed, not left hanging until a timeout


def test_a_new_route_reloads_seamlessly_and_serves(rig):
    rig.start(["a"])
    master, reloads, worker = rig.serving()
    extra = Route("api", free_port(), "http")
    snapshot = Snapshot(
        (
            RouteState(extra, (Instance("c", "node1", "127.0.0.1", rig.backends["c"].port),)),
            *rig.snapshot(["a"]).routes,
        )
    )
    with Load(rig.port) as load:
        result = rig.apply(snapshot)
        load.wait_for_more(20)
    assert result.how == "reload"
    assert load.failures == []
    assert get(extra.port) == "c"
    assert names_seen(rig.port) == ["a"]
    new_master, new_reloads, new_worker = rig.serving()
    assert (new_master, new_reloads) == (master, reloads + 1)
    assert new_worker != worker

    result = rig.apply(rig.snapshot(["a"]))  # the route goes away again
    assert result.how == "reload"
    with pytest.raises(OSError):
        get(extra.port)


def test_a_config_haproxy_rejects_leaves_the_old_config_serving(rig, tmp_path):
    rig.start(["a"])
    before = rig.serving()
    live = rig.settings.haproxy_cfg.read_text()
    broken = tmp_path / "broken.j2"
    broken.write_text(render.default_template().read_text().replace("balance roundrobin", "balance nonsense"))
    with pytest.raises(haproxy.CheckFailed, match=r"haproxy\.cfg\.new:\d+\] : balance only supports"):
        rig.apply(rig.snapshot(["a", "b"]), template=render.load_template(broken))
    assert rig.settings.haproxy_cfg.read_text() == live
    assert not list(tmp_path.glob("haproxy.cfg.new"))
    assert names_seen(rig.port) == ["a"]
    assert rig.serving() == before
    # and the next good config goes through as usual
    assert rig.apply(rig.snapshot(["a", "b"])).how == "runtime"


def test_a_reload_haproxy_refuses_restores_the_old_file_and_keeps_serving(rig):
    """A config can pass `haproxy -c` and still fail to load: here a route on a port already taken."""
    rig.start(["a"])
    live = rig.settings.haproxy_cfg.read_text()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        clash = Route("clash", taken.getsockname()[1], "tcp")
        with pytest.raises(haproxy.ApplyError, match="rejected the reload"):
            rig.apply(rig.snapshot(["a"], extra_routes=[clash]))
    assert rig.settings.haproxy_cfg.read_text() == live  # the file on disk is what runs
    assert names_seen(rig.port) == ["a"]
    result = rig.apply(rig.snapshot(["a", "b"]))  # and later changes still apply
    assert result.how == "runtime"
    assert names_seen(rig.port) == ["a", "b"]


def test_a_full_state_dir_fails_the_apply_changes_nothing_and_the_next_apply_goes_through(tmp_path, backends):
    with small_tmpfs(tmp_path / "state") as state:
        rig = Rig(state, backends)
        try:
            rig.start(["a"])
            before = rig.serving()
            files = sorted(os.listdir(state))
            live = rig.settings.haproxy_cfg.read_text()
            filler = fill(state)
            with pytest.raises(haproxy.ApplyError, match="No space left on device"):
                rig.apply(rig.snapshot(["a", "b"]))
            assert rig.settings.haproxy_cfg.read_text() == live
            assert sorted(os.listdir(state)) == sorted([*files, filler.name])  # no half-written file left
            assert names_seen(rig.port) == ["a"]
            assert rig.serving() == before
            filler.unlink()
            assert rig.apply(rig.snapshot(["a", "b"])).how == "runtime"
            assert names_seen(rig.port) == ["a", "b"]
        finally:
            if rig.haproxy is not None:
                rig.haproxy.stop()


def test_haproxy_stops_gracefully_on_the_programs_stop_signal(rig):
    rig.start(["a"])
    program = haproxy.program(rig.settings, depends_on=("sync",))
    assert program.command[:4] == (
        rig.settings.haproxy_bin,
        "-W",
        "-S",
        f"{rig.settings.haproxy_master_socket},mode,600",
    )
    assert program.depends_on == ("sync",)
    assert rig.haproxy is not None and rig.haproxy.proc is not None
    rig.haproxy.proc.send_signal(program.stop_signal)
    assert rig.haproxy.proc.wait(timeout=program.stop_timeout) == 0
    assert not haproxy.running(rig.settings)


def test_apply_mode_reload_reloads_for_every_change(tmp_path, backends):
    rig = Rig(tmp_path, backends, apply_mode="reload")
    try:
        rig.start(["a"])
        _, reloads, _ = rig.serving()
        assert rig.apply(rig.snapshot(["a", "b"])).how == "reload"
        assert rig.serving()[1] == reloads + 1
        assert names_seen(rig.port) == ["a", "b"]
    finally:
        if rig.haproxy is not None:
            rig.haproxy.stop()


def test_a_removed_server_with_a_long_session_drains_instead_of_being_cut(rig):
    """A TCP client pinned to a removed instance keeps its connection; the server is deleted once it ends."""
    rig.start(["a"])
    tcp = Route("pg", free_port(), "tcp")
    a = Instance("a", "node1", "127.0.0.1", rig.backends["a"].port)
    b = Instance("b", "node1", "127.0.0.1", rig.backends["b"].port)

    def snapshot(*instances: Instance) -> Snapshot:
        return Snapshot((RouteState(tcp, instances), *rig.snapshot(["a"]).routes))

    assert rig.apply(snapshot(a)).how == "reload"
    conn = http.client.HTTPConnection("127.0.0.1", tcp.port, timeout=5)  # keep-alive, through TCP mode
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"a"

    result = rig.apply(snapshot(b))
    assert result.how == "runtime"
    assert result.draining == ("pg/node1_a",)
    conn.request("GET", "/")  # the pinned session still works
    assert conn.getresponse().read() == b"a"
    assert get(tcp.port) == "b"  # new connections go to b

    result = rig.apply(snapshot(a, b))  # the instance comes back while its old session still runs
    assert (result.how, result.updated) == ("runtime", ("pg/node1_a",))
    assert sorted({get(tcp.port) for _ in range(10)}) == ["a", "b"]
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"a"

    assert rig.apply(snapshot(b)).draining == ("pg/node1_a",)
    conn.close()

    def deleted() -> bool:
        rig.apply(snapshot(b))  # an apply with nothing new retries the pending deletion
        return "node1_a" not in haproxy.show_servers_state(rig.settings.haproxy_stats_socket)["pg"]

    eventually(deleted, what="the drained server deleted")


def test_two_hundred_membership_changes_under_load_fail_no_request(rig):
    rig.start(["a", "b", "c"])
    before = rig.serving()
    cycle = [["a", "b"], ["b", "c"], ["a", "c"], ["a", "b", "c"], ["c"], ["a", "b", "c", "d"], ["d", "a"]]
    with Load(rig.port) as load:
        load.wait_for_more(20)
        hows: Dict[str, int] = {}
        for i in range(200):
            result = rig.apply(rig.snapshot(cycle[i % len(cycle)]))
            hows[result.how] = hows.get(result.how, 0) + 1
            if i % 20 == 0:
                load.wait_for_more(5)  # the load really runs between the changes
        load.wait_for_more(20)
    assert hows == {"runtime": 200}
    assert load.failures == []
    assert load.ok > 200
    assert len(load.seen) == 4  # every backend answered at some point
    assert rig.serving() == before


@pytest.fixture
def counted(tmp_path, backends):
    """A rig whose haproxy_bin counts every `haproxy -c` it is asked for."""
    state = tmp_path / "state"
    state.mkdir()
    counting = CountingHAProxy(tmp_path, require_binary("haproxy"))
    rig = Rig(state, backends, haproxy_bin=str(counting.path))
    rig.checks = counting.checks  # type: ignore[attr-defined]
    yield rig
    if rig.haproxy is not None:
        rig.haproxy.stop()


def edited_template(tmp_path: Path, old: str, new: str):
    path = tmp_path / f"edited-{abs(hash(new))}.j2"
    text = render.default_template().read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return render.load_template(path)


def test_server_only_changes_spawn_no_haproxy_check_and_a_new_route_does(counted):
    counted.start(["a"])
    assert counted.checks() == 1  # the first start is checked
    before = counted.serving()
    cycle = [["a", "b"], ["b"], ["b", "c"], ["a", "c", "d"], ["a"]]
    for i in range(100):
        result = counted.apply(counted.snapshot(cycle[i % len(cycle)], weight=1 + i % 3))
        assert result.how == "runtime", result
    assert names_seen(counted.port) == ["a"]
    assert counted.checks() == 1
    assert counted.serving() == before

    extra = Route("api", free_port(), "http")
    assert counted.apply(counted.snapshot(["a"], extra_routes=[extra])).how == "reload"
    assert counted.checks() == 2


def test_a_changed_server_option_is_checked_then_reloaded(counted, tmp_path):
    counted.start(["a", "b"])
    _, reloads, _ = counted.serving()
    template = edited_template(
        tmp_path, "weight {{ instance.weight }}", "weight {{ instance.weight }} maxconn 100"
    )
    result = counted.apply(counted.snapshot(["a", "b"]), template=template)
    assert (result.how, counted.checks()) == ("reload", 2)
    assert "options changed" in result.reason
    assert counted.serving()[1] == reloads + 1
    assert names_seen(counted.port) == ["a", "b"]
    assert "maxconn 100" in counted.settings.haproxy_cfg.read_text()


def test_a_server_line_haproxy_c_rejects_leaves_the_running_config_serving(counted, tmp_path):
    counted.start(["a"])
    before = counted.serving()
    live = counted.settings.haproxy_cfg.read_text()
    template = edited_template(
        tmp_path, "weight {{ instance.weight }}", "weight {{ instance.weight }} no-such-option"
    )
    with pytest.raises(haproxy.CheckFailed, match="no-such-option"):
        counted.apply(counted.snapshot(["a", "b"]), template=template)
    assert counted.checks() == 2  # checked, not sent to the runtime API
    assert counted.settings.haproxy_cfg.read_text() == live
    assert not list(counted.settings.state_dir.glob("haproxy.cfg.new"))
    assert names_seen(counted.port) == ["a"]
    assert counted.serving() == before


def test_a_template_edit_is_checked_before_the_reload(counted, tmp_path):
    counted.start(["a"])
    _, reloads, _ = counted.serving()
    template = edited_template(tmp_path, "retries 3", "retries 2")
    assert counted.apply(counted.snapshot(["a"]), template=template).how == "reload"
    assert (counted.checks(), counted.serving()[1]) == (2, reloads + 1)
    broken = edited_template(tmp_path, "retries 3", "retries 3\n    no-such-keyword")
    with pytest.raises(haproxy.CheckFailed, match="no-such-keyword"):
        counted.apply(counted.snapshot(["a", "b"]), template=broken)
    assert (counted.checks(), counted.serving()[1]) == (3, reloads + 1)
    assert names_seen(counted.port) == ["a"]


def test_a_server_the_runtime_api_refuses_is_checked_and_reloaded_under_load_with_no_failed_request(
    counted, tmp_path
):
    """HAProxy refuses `add server` on a backend whose balance algorithm is static (here static-rr,
    which a user template may choose): the change falls back to check + seamless reload."""
    template = edited_template(tmp_path, "balance roundrobin", "balance static-rr")
    counted.template = template
    counted.start(["a"])
    _, reloads, _ = counted.serving()
    with Load(counted.port) as load:
        load.wait_for_more(20)
        result = counted.apply(counted.snapshot(["a", "b"]))
        load.wait_for_more(20)
        removed = counted.apply(counted.snapshot(["b"]))
        load.wait_for_more(20)
    assert (result.how, counted.checks()) == ("reload", 2)
    assert "runtime API failed" in result.reason and "add server" in result.reason
    assert removed.how in ("runtime", "reload")
    assert load.failures == []
    assert names_seen(counted.port) == ["b"]
    assert counted.serving()[1] >= reloads + 1
    assert counted.settings.haproxy_cfg.read_text() == render.render(
        template, counted.snapshot(["b"]), counted.settings
    )


def test_a_value_cannot_smuggle_a_second_command_into_the_admin_socket(counted, tmp_path):
    """The admin socket runs `;`-separated commands. A word holding one is never sent; a server line
    holding one is left to `haproxy -c`, and whatever it says, web/node1_a stays in service."""
    counted.start(["a", "b"])
    before = counted.serving()
    sock = counted.settings.haproxy_stats_socket
    with pytest.raises(haproxy.RuntimeAPIError, match="word 4 holds a ';'"):
        runtime.command(
            sock, ("set", "weight", "web/node1_a", "2;set", "server", "web/node1_b", "state", "maint")
        )
    state = haproxy.show_servers_state(sock)["web"]
    assert (state["node1_a"].weight, state["node1_b"].ready) == (1, True)

    smuggling = edited_template(
        tmp_path,
        "weight {{ instance.weight }}",
        "weight {{ instance.weight }};set server web/node1_a state maint",
    )
    with pytest.raises(haproxy.CheckFailed):
        counted.apply(counted.snapshot(["a", "b", "c"]), template=smuggling)
    state = haproxy.show_servers_state(sock)["web"]
    assert "node1_c" not in state and state["node1_a"].ready and state["node1_b"].ready
    assert names_seen(counted.port) == ["a", "b"]
    assert counted.serving() == before


def test_a_runtime_apply_that_fails_midway_and_then_fails_its_check_puts_the_live_config_back(
    counted, caplog
):
    """Two new servers with the same `id`: HAProxy adds the first, refuses the second, and `haproxy -c`
    rejects the candidate. The first must not stay behind: the live file is reloaded, so what runs is
    again exactly the file on disk."""
    counted.start(["a"])
    live = counted.settings.haproxy_cfg.read_text()
    _, reloads, _ = counted.serving()
    text = render.render(counted.template, counted.snapshot(["a", "b", "c"]), counted.settings)
    for name in ("node1_b", "node1_c"):
        start = text.index(f"server {name} ")
        end = text.index("\n", start)
        text = text[:end] + " id 7" + text[end:]
    with pytest.raises(haproxy.CheckFailed):
        haproxy.apply(counted.settings, None, counted.snapshot(["a", "b", "c"]), text)
    assert "runtime API apply failed" in caplog.text and "add server web/node1_c" in caplog.text
    assert counted.checks() == 2
    assert counted.settings.haproxy_cfg.read_text() == live
    assert sorted(haproxy.show_servers_state(counted.settings.haproxy_stats_socket)["web"]) == ["node1_a"]
    assert names_seen(counted.port) == ["a"]
    assert counted.serving()[1] == reloads + 1  # the live file reloaded: node1_b is gone


def test_a_file_written_while_haproxy_was_starting_is_brought_to_what_runs_when_applied_again(rig):
    # The sync loop wrote the file while HAProxy, already past reading its file, did not answer yet:
    # the same text applied again (as the sync loop does once HAProxy answers) makes HAProxy run it.
    rig.start(["a"])
    newer = render.render(rig.template, rig.snapshot(["a", "b"]), rig.settings)
    rig.settings.haproxy_cfg.write_text(newer)
    result = haproxy.apply(rig.settings, None, rig.snapshot(["a", "b"]), newer, baseline=haproxy.SERVERS)
    assert (result.how, result.added) == ("runtime", ("web/node1_b",))
    assert names_seen(rig.port) == ["a", "b"]

    # A backend only in the file: whatever the baseline, the same text reloads.
    extra = Route("db", free_port(), "tcp")
    with_db = render.render(rig.template, rig.snapshot(["a", "b"], [extra]), rig.settings)
    rig.settings.haproxy_cfg.write_text(with_db)
    result = rig.apply(rig.snapshot(["a", "b"], [extra]))
    assert result.how == "reload" and "other backends" in result.reason
    assert "db" in runtime.show_backends(rig.settings.haproxy_stats_socket)


def test_an_apply_with_an_unknown_baseline_reloads_even_the_same_text_so_haproxy_runs_the_file(rig):
    # Told that HAProxy may run another skeleton than the live file's (files were written while it did
    # not answer), apply takes nothing from the file: a frontend port changed only there is served.
    rig.start(["a"])
    moved = Rig(rig.settings.state_dir, rig.backends)
    newer = render.render(rig.template, moved.snapshot(["a"]), rig.settings)  # another frontend port
    rig.settings.haproxy_cfg.write_text(newer)
    assert rig.apply(moved.snapshot(["a"])).how == "unchanged"  # what the live file says is not enough
    result = haproxy.apply(rig.settings, None, moved.snapshot(["a"]), newer, baseline=haproxy.UNKNOWN)
    assert result.how == "reload" and "did not answer" in result.reason
    assert eventually(lambda: names_seen(moved.port) == ["a"], what="traffic on the moved frontend")
