"""basenode's state dir full."""

from __future__ import annotations

from tests.support.backends import Load
from tests.support.basenode_run import serving
from tests.support.ports import free_port
from tests.support.tmpfs import fill, small_tmpfs
from tests.support.waiting import eventually


def test_a_full_state_dir_holds_catalog_changes_back_until_space_is_freed(
    tmp_path, consul_agent, backends, start_basenode
):
    """The state dir is a 1 MB tmpfs, filled up; then an instance registers. The new config cannot be
    written: HAProxy keeps the last good config (the new instance gets no traffic, the old one all of
    it), /health is 503 `apply:` naming the full disk, basenode_apply_errors_total grows and the log
    says the apply is retried. Once space is freed the retry applies it by itself, /health is 200,
    and a registration made after that is routed too."""
    a, b, c = backends.start("a"), backends.start("b"), backends.start("c")
    consul_agent.register("web", a.port, service_id="web-a")
    port = free_port()
    with small_tmpfs(tmp_path / "state") as state:
        node = start_basenode(f"web:{port}/http", state_dir=state)
        try:
            eventually(serving(port, ["a"]), timeout=30, what="a through basenode")
            eventually(node.healthy, timeout=30, what="/health 200 before the fault")
            live = node.settings.haproxy_cfg.read_text()
            errors = node.metric("basenode_apply_errors_total")
            with Load(port) as load:
                filler = fill(state)
                consul_agent.register("web", b.port, service_id="web-b")
                eventually(
                    lambda: [p for p in node.problems("apply: ") if "No space left on device" in p],
                    timeout=30,
                    what="/health 503 with an apply problem naming the full disk",
                )
                eventually(lambda: node.metric("basenode_apply_errors_total") > errors, what="apply errors")
                eventually(lambda: node.metric("basenode_apply_errors_total") > errors + 1, what="a retry")
                load.wait_for_more(50)
                assert load.seen == {"a"} and load.failures == []
                assert node.settings.haproxy_cfg.read_text() == live
                filler.unlink()
                eventually(
                    serving(port, ["a", "b"]), timeout=30, what="the held-back change once space is freed"
                )
                eventually(node.healthy, timeout=30, what="/health 200 after space is freed")
                consul_agent.register("web", c.port, service_id="web-c")
                eventually(serving(port, ["a", "b", "c"]), what="a registration after recovery to be routed")
            assert load.failures == []
            out = node.output()
            assert "apply failed, retrying" in out and "No space left on device" in out
            assert "sync works again" in out
        finally:
            node.stop()  # before the tmpfs goes: HAProxy's sockets live on it
