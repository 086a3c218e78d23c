"""`dist/basenode run --no-consul --no-haproxy` as a plain supervisor, its own state dir and config.

The `supervisor(config, *command, env=...)` fixture starts one (stdin /dev/null, output to a file)
and stops it at the end of the test; `node.cli("status", "--json")` asks it as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Mapping, Optional

import pytest

from tests.conftest import ZIPAPP
from tests.support.basenode_run import terminate
from tests.support.ports import free_port


class Supervisor:
    """`dist/basenode run --no-consul --no-haproxy` with its own state dir; output to a file."""

    def __init__(
        self, tmp: Path, config: str, *command: str, env: Optional[Mapping[str, str]] = None
    ) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.state_dir = tmp / "state"
        self.status_addr = f"127.0.0.1:{free_port()}"  # nothing listens there: no sync loop
        (tmp / "basenode.toml").write_text(config)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("BASENODE_", "CONSUL_"))}
        self.env["BASENODE_CONFIG"] = str(tmp / "basenode.toml")
        self.env.update(env or {})
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

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def supervisor(tmp_path: Path, zipapp) -> Iterator:
    started: List[Supervisor] = []

    def start(config: str, *command: str, env: Optional[Mapping[str, str]] = None) -> Supervisor:
        node = Supervisor(tmp_path / f"node{len(started)}", config, *command, env=env)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()
