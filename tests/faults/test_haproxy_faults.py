"""The HAProxy master killed with SIGKILL."""

from __future__ import annotations

import os
import signal

from tests.support.backends import Load
from tests.support.basenode_run import HealthPoller, serving
from tests.support.ports import free_port
from tests.support.supervise_helpers import pid_alive
from tests.support.waiting import eventually


def test_a_killed_haproxy_master_comes_back_on_the_last_good_config(consul_agent, backends, start_basenode):
    """SIGKILL to the HAProxy master. Its workers exit with it (none is left serving an old config),
    so routing STOPS until basenode's supervisor has started HAProxy again, a fraction of a second
    later: requests in that gap fail to connect, none gets a wrong answer. The new HAProxy runs the
    last good config, including a server that had been added through the runtime API only. The
    fault shows in /health (503 `haproxy:` while it is down), in basenode_program_restarts_total and
    in the log; afterwards /health is 200 and a new registration is routed with no failed request."""
    a, b, c = backends.start("a"), backends.start("b"), backends.start("c")
    consul_agent.register("web", a.port, service_id="web-a")
    port = free_port()
    node = start_basenode(f"web:{port}/http")
    eventually(serving(port, ["a"]), timeout=30, what="a through basenode")
    eventually(node.healthy, timeout=30, what="/health 200 before the fault")
    consul_agent.register("web", b.port, service_id="web-b")
    eventually(serving(port, ["a", "b"]), what="b, added through the runtime API")
    before = node.proc_info()
    assert before.reloads == 0  # b reached the running worker without a reload
    restarts = node.metric('basenode_program_restarts_total{program="haproxy"}')

    with Load(port) as load, HealthPoller(node) as health:
        os.kill(before.master_pid, signal.SIGKILL)
        eventually(lambda: not any(pid_alive(pid) for pid in before.workers), what="the old workers to exit")
        eventually(lambda: node.proc_info().master_pid != before.master_pid, timeout=30, what="a new master")
        eventually(serving(port, ["a", "b"]), timeout=30, what="the last good config served again")
        eventually(node.healthy, timeout=30, what="/health 200 after the restart")
    assert health.problems("haproxy: "), "the outage did not show in /health"
    assert load.ok > 0
    wrong = [f for f in load.failures if f.startswith("RuntimeError")]  # an HTTP answer other than 200
    assert wrong == [], wrong[:5]
    assert node.metric('basenode_program_restarts_total{program="haproxy"}') == restarts + 1
    assert "haproxy: killed by SIGKILL" in node.output()

    with Load(port) as load:
        consul_agent.register("web", c.port, service_id="web-c")
        eventually(serving(port, ["a", "b", "c"]), what="a registration after recovery to be routed")
        load.wait_for_more(50)
    assert load.failures == []
