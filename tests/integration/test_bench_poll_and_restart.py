"""bench/poll_and_restart.py, the benchmarks' docker-basenode: it must follow the catalog the old way
(a full read every interval, HAProxy restarted for each change), or the figures compare with nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from basenode.config import Settings
from basenode.output import haproxy
from tests.conftest import ROOT, require_binary
from tests.support.basenode_run import serving
from tests.support.ports import free_port
from tests.support.waiting import eventually


class Poller:
    def __init__(self, tmp_path: Path, consul_addr: str, routes: str) -> None:
        require_binary("haproxy")
        self.state_dir = tmp_path / "state"
        self.log = tmp_path / "poller.log"
        env = {**os.environ, "CONSUL_HTTP_ADDR": consul_addr}
        argv = [sys.executable, str(ROOT / "bench" / "poll_and_restart.py"), "--interval", "0.5"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [*argv, "--state-dir", str(self.state_dir), "--routes", routes],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def master_pid(self) -> int:
        return haproxy.show_proc(Settings(state_dir=self.state_dir).haproxy_master_socket).master_pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        assert self.proc.wait(timeout=20) == 0, self.output()


@pytest.fixture
def start_poller(tmp_path: Path, consul_agent) -> Iterator:
    started = []

    def start(routes: str) -> Poller:
        poller = Poller(tmp_path, consul_agent.http_addr, routes)
        started.append(poller)
        return poller

    yield start
    for poller in started:
        if poller.proc.poll() is None:
            poller.proc.kill()
            poller.proc.wait()


def test_the_poller_restarts_haproxy_for_a_change_and_still_follows_the_catalog(
    consul_agent, backends, start_poller
):
    a, b = backends.start("a"), backends.start("b")
    consul_agent.register("web", a.port, service_id="web-a")
    port = free_port()
    poller = start_poller(f"web:{port}/http")
    eventually(serving(port, ["a"]), timeout=30, what="a through the poller's HAProxy")
    master = poller.master_pid()
    consul_agent.register("web", b.port, service_id="web-b")
    eventually(serving(port, ["a", "b"]), timeout=30, what="the poll to see b")
    assert poller.master_pid() != master  # HAProxy was restarted for the change, not reloaded
    eventually(lambda: "applied by restart" in poller.output(), what="the restart to be logged")
    last = poller.master_pid()
    poller.stop()
    assert not Path(f"/proc/{last}").exists()  # stopping the poller stopped its HAProxy
