"""`basenode status` and `basenode health` with no sync loop: basenode as a plain supervisor.

`basenode run --no-consul --no-haproxy -- COMMAND` has no status endpoint; the commands read PID 1's
control socket instead, as the image's HEALTHCHECK does in that mode.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ZIPAPP
from tests.support.ports import free_port
from tests.support.waiting import eventually

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
# The application stops only once the test lets it (or its 10 s stop timeout SIGKILLs it), so that
# the FATAL state can be seen while basenode stops.
SLOW_TO_STOP = 'trap "while [ ! -e {release} ]; do sleep 0.05; done; exit 0" TERM; sleep 60 & wait'


def test_health_fails_once_a_required_program_is_fatal(supervisor, tmp_path: Path):
    go, release = tmp_path / "go", tmp_path / "release"
    node = supervisor(FAILS_ON_DEMAND.format(go=go), "sh", "-c", SLOW_TO_STOP.format(release=release))
    eventually(lambda: node.programs().get("needed", {}).get("state") == "running", what="needed up")
    eventually(lambda: node.cli("health").returncode == 0, what="health to pass")

    go.touch()

    def fatal_reported() -> bool:
        health = node.cli("health")
        return (
            health.returncode == 1
            and "unhealthy: programs: required program needed is FATAL" in health.stderr
        )

    eventually(fatal_reported, timeout=30, what="health to fail naming the FATAL program")
    release.touch()
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
