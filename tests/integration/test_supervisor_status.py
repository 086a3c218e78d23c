"""`basenode status` and `basenode health` with no sync loop: basenode as a plain supervisor.

`basenode run --no-consul --no-haproxy -- COMMAND` has no status endpoint; the commands read PID 1's
control socket instead, as the image's HEALTHCHECK does in that mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List

import pytest

from tests.conftest import ZIPAPP
from tests.support.basenode_run import terminate
from tests.support.ports import free_port
from tests.support.waiting import eventually


class Supervisor:
    """`dist/basenode run --no-consul --no-haproxy` with its own state dir; output to a file."""

    def __init__(self, tmp: Path, config: str, *command: str) -> None:
        self.state_dir = tmp / "state"
        self.status_addr = f"127.0.0.1:{free_port()}"  # nothing listens there: no sync loop
        (tmp / "basenode.toml").write_text(config)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("BASENODE_", "CONSUL_"))}
        self.env["BASENODE_CONFIG"] = str(tmp / "basenode.toml")
        self.log_path = tmp / "basenode.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ZIPAPP),
                "run",
                "--no-consul",
                "--no-haproxy",
                *self._where(),
                "--",
                *command,
            ],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def _where(self) -> List[str]:
        return ["--state-dir", str(self.state_dir), "--status-addr", self.status_addr]

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, str(ZIPAPP), args[0], *self._where(), *args[1:]]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60)

    def programs(self) -> dict:
        out = self.cli("status", "--json")
        return {p["name"]: p for p in json.loads(out.stdout)["programs"]} if out.stdout else {}

    def stop(self) -> int:
        terminate(self.proc)
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def supervisor(tmp_path: Path, zipapp) -> Iterator:
    started: List[Supervisor] = []

    def start(config: str, *command: str) -> Supervisor:
        node = Supervisor(tmp_path, config, *command)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


SIDE = '[programs.side]\ncommand = ["sleep", "1000"]\nstartsecs = 0\n'


def test_status_lists_the_programs_and_health_passes_with_no_sync_loop(supervisor):
    node = supervisor(SIDE, "sleep", "60")
    eventually(lambda: node.programs().get("app", {}).get("state") == "running", what="the app running")
    out = node.cli("status", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["healthy"] is True and doc["problems"] == []
    assert [(p["name"], p["state"]) for p in doc["programs"]] == [("side", "running"), ("app", "running")]
    assert all(p["pid"] for p in doc["programs"])
    assert (doc["consul"], doc["sync"], doc["haproxy"]["enabled"]) == (None, None, False)
    health = node.cli("health")
    assert health.returncode == 0, health.stderr
    table = node.cli("status")
    assert table.returncode == 0 and "basenode" in table.stdout and "healthy" in table.stdout
    assert any(line.split()[:2] == ["app", "running"] for line in table.stdout.splitlines()), table.stdout


# Up (running 0.5 s) until GO exists; from then on it exits 1 at once, each restart a failed start.
FAILS_ON_DEMAND = """
[programs.needed]
command = ["sh", "-c", "while [ ! -e {go} ]; do sleep 0.05; done; exit 1"]
startsecs = 0.5
startretries = 1
backoff_initial = 0
required = true
"""
# The application takes a few seconds to stop, so that the FATAL state can be seen while it does.
SLOW_TO_STOP = 'trap "sleep 4; exit 0" TERM; sleep 60 & wait'


def test_health_fails_once_a_required_program_is_fatal(supervisor, tmp_path: Path):
    go = tmp_path / "go"
    node = supervisor(FAILS_ON_DEMAND.format(go=go), "sh", "-c", SLOW_TO_STOP)
    eventually(lambda: node.programs().get("needed", {}).get("state") == "running", what="needed up")
    eventually(lambda: node.cli("health").returncode == 0, what="health to pass")

    go.touch()
    eventually(lambda: node.programs().get("needed", {}).get("state") == "fatal", what="needed FATAL")
    health = node.cli("health")
    assert health.returncode == 1
    assert "unhealthy: programs: required program needed is FATAL" in health.stderr
    assert node.proc.wait(timeout=30) == 1  # a required FATAL stops basenode non-zero
    gone = node.cli("health")
    assert gone.returncode == 1 and "is `basenode run` running?" in gone.stderr


def test_with_a_sync_loop_health_fails_when_its_endpoint_does_not_answer(start_basenode):
    node = start_basenode(f"web:{free_port()}")
    eventually(node.healthy, timeout=30, what="/health to pass")
    assert node.cli("health").returncode == 0
    # The same PID 1 asked at an address where its sync loop does not serve: PID 1 answers, and
    # says that the endpoint it should have is missing, rather than a supervisor-only "healthy".
    argv = [sys.executable, str(ZIPAPP), "health", "--state-dir", str(node.state_dir)]
    out = subprocess.run(
        [*argv, "--status-addr", f"127.0.0.1:{free_port()}"],
        env=node.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "unhealthy: sync: the status endpoint does not answer" in out.stderr
