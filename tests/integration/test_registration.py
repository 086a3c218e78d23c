"""Registration as registrator users expect it: every SERVICE_* variable and [services.NAME] key gives
the registration the real agent shows (/v1/agent/services, /v1/agent/checks), and a bad value stops
`basenode run` before anything starts, with one line naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from tests.conftest import ZIPAPP
from tests.support.backends import Backends
from tests.support.basenode_run import terminate
from tests.support.consul_agent import ConsulAgent
from tests.support.ports import free_port
from tests.support.waiting import eventually

SLEEPER = "import time\nwhile True: time.sleep(1)\n"


def env_for(agent: ConsulAgent, config: str = os.devnull, **variables: str) -> Dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BASENODE_", "CONSUL_", "SERVICE_"))}
    return {**clean, "BASENODE_CONFIG": config, "CONSUL_HTTP_ADDR": agent.http_addr, **variables}


@pytest.fixture
def run_basenode(tmp_path: Path, zipapp: Path) -> Iterator:
    started: List[subprocess.Popen] = []

    def start(env: Dict[str, str], app: str = SLEEPER) -> subprocess.Popen:
        argv = [sys.executable, str(ZIPAPP), "run", "--no-consul", "--no-haproxy", "--drain", "0"]
        argv += ["--state-dir", str(tmp_path / "state"), "--status-addr", f"127.0.0.1:{free_port()}"]
        proc = subprocess.Popen(
            [*argv, "--", sys.executable, "-c", app],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        terminate(proc)


def check_definition(agent: ConsulAgent, check_id: str) -> Dict[str, Any]:
    """The check as the agent runs it. Consul 1.8's API answers `"Definition": {}`, so this is the
    agent's own record in its data dir (durations in nanoseconds)."""
    for path in Path(agent.data_dir, "checks").iterdir():
        record = json.loads(path.read_text())
        if record["Check"]["CheckID"] == check_id:
            return record["ChkType"]
    raise AssertionError(f"the agent has no check {check_id}")


SECOND = 1_000_000_000  # ns


def registered(agent: ConsulAgent, *ids: str) -> Dict[str, dict]:
    def all_there():
        services = agent.get("/v1/agent/services")
        return services if all(i in services for i in ids) else None

    return eventually(all_there, timeout=30, what=f"{ids} registered")


def test_every_registrator_variable_reaches_the_agent_as_registered(consul_agent, run_basenode):
    backends = Backends()
    try:
        web, admin = backends.start("web"), backends.start("admin")
        env = env_for(
            consul_agent,
            SERVICE_NAME="shop",
            SERVICE_PORT=str(web.port),
            SERVICE_ID="shop-1",
            SERVICE_TAGS="v1,blue",
            SERVICE_META="version=1.2.3,team=core",
            SERVICE_ADDRESS="127.0.0.1",
            SERVICE_WEIGHT="10/2",
            SERVICE_CHECK_HTTP="/health",
            SERVICE_CHECK_INTERVAL="1s",
            SERVICE_CHECK_TIMEOUT="700ms",
            SERVICE_CHECK_DEREGISTER_AFTER="90m",
            **{
                f"SERVICE_{admin.port}_NAME": "shop-admin",
                f"SERVICE_{admin.port}_TAGS": "admin",
                f"SERVICE_{admin.port}_CHECK_TCP": "1",
                f"SERVICE_{admin.port}_CHECK_INTERVAL": "2s",
            },
        )
        proc = run_basenode(env)
        services = registered(consul_agent, "shop-1", "shop-admin")
        shop, shop_admin = services["shop-1"], services["shop-admin"]
        assert (shop["Service"], shop["Port"], shop["Address"]) == ("shop", web.port, "127.0.0.1")
        assert sorted(shop["Tags"]) == ["blue", "v1"]
        assert shop["Meta"] == {"version": "1.2.3", "team": "core"}
        assert shop["Weights"] == {"Passing": 10, "Warning": 2}
        # The per-port service: its own name, port, tags and check; the rest inherited.
        assert (shop_admin["Service"], shop_admin["Port"], shop_admin["Tags"]) == (
            "shop-admin",
            admin.port,
            ["admin"],
        )
        assert shop_admin["Meta"] == {"version": "1.2.3", "team": "core"}
        assert shop_admin["Weights"] == {"Passing": 10, "Warning": 2}

        checks = eventually(
            lambda: (lambda c: c if all(x.get("Status") == "passing" for x in c.values()) else None)(
                consul_agent.get("/v1/agent/checks")
            ),
            timeout=20,
            what="both checks passing",
        )
        http, tcp = checks["service:shop-1"], checks["service:shop-admin"]
        assert (http["ServiceID"], http["Type"]) == ("shop-1", "http")
        assert f"http://127.0.0.1:{web.port}/health" in http["Output"]
        assert (tcp["ServiceID"], tcp["Type"]) == ("shop-admin", "tcp")
        assert f"127.0.0.1:{admin.port}" in tcp["Output"]
        http, tcp = (
            check_definition(consul_agent, "service:shop-1"),
            check_definition(consul_agent, "service:shop-admin"),
        )
        assert http["HTTP"] == f"http://127.0.0.1:{web.port}/health"
        assert (http["Interval"], http["Timeout"]) == (SECOND, 0.7 * SECOND)
        assert http["DeregisterCriticalServiceAfter"] == 90 * 60 * SECOND
        assert (tcp["TCP"], tcp["Interval"]) == (f"127.0.0.1:{admin.port}", 2 * SECOND)
        assert tcp["Timeout"] == 0.7 * SECOND  # inherited, as is DeregisterCriticalServiceAfter
        assert tcp["DeregisterCriticalServiceAfter"] == 90 * 60 * SECOND
        assert proc.poll() is None
    finally:
        backends.close()


def test_a_ttl_check_is_kept_passing_while_the_app_runs_and_a_grpc_check_is_registered(
    consul_agent, run_basenode, tmp_path
):
    grpc_port = free_port()
    config = tmp_path / "basenode.toml"
    config.write_text(
        "[services.jobs]\n"
        f"port = {free_port()}\n"
        'check_ttl = "2s"\n'
        "\n"
        "[services.rpc]\n"
        f"port = {grpc_port}\n"
        'check_grpc = "health.v1"\n'
        'check_interval = "30s"\n'
        'check_timeout = "1s"\n'
        'meta = { proto = "grpc" }\n'
        "weight = { passing = 3, warning = 0 }\n"
        'address = "localhost"\n'
        'check_deregister_after = "5m"\n'
    )
    run_basenode(env_for(consul_agent, config=str(config)))
    services = registered(consul_agent, "jobs", "rpc")
    rpc = services["rpc"]
    assert (rpc["Meta"], rpc["Weights"], rpc["Address"]) == (
        {"proto": "grpc"},
        {"Passing": 3, "Warning": 0},
        "localhost",
    )
    assert consul_agent.get("/v1/agent/checks")["service:rpc"]["Type"] == "grpc"
    grpc = check_definition(consul_agent, "service:rpc")
    assert grpc["GRPC"] == f"127.0.0.1:{grpc_port}/health.v1"
    assert (grpc["Interval"], grpc["Timeout"]) == (30 * SECOND, SECOND)
    assert grpc["DeregisterCriticalServiceAfter"] == 5 * 60 * SECOND
    assert check_definition(consul_agent, "service:jobs")["TTL"] == 2 * SECOND

    def ttl_status() -> str:
        return consul_agent.get("/v1/agent/checks")["service:jobs"]["Status"]

    assert consul_agent.get("/v1/agent/checks")["service:jobs"]["Type"] == "ttl"
    eventually(lambda: ttl_status() == "passing", timeout=20, what="the TTL check passed by basenode")
    # Over three TTLs, a check nobody passed would have gone critical: basenode keeps it passing.
    watched_until = time.monotonic() + 6
    while time.monotonic() < watched_until:
        assert ttl_status() == "passing"
        time.sleep(0.2)


BAD_VALUES = [
    ({"SERVICE_META": "password=hunter2 x"}, "SERVICE_META: meta key password: "),
    ({"SERVICE_WEIGHT": "0"}, 'SERVICE_WEIGHT: expected passing 1-256 and warning 0-256, got "0"'),
    ({"SERVICE_ADDRESS": "1.2.3.4; rm"}, "SERVICE_ADDRESS: expected an IP address or a host name"),
    (
        {"SERVICE_CHECK_TIMEOUT": "soon"},
        'SERVICE_CHECK_TIMEOUT: expected a duration like 10s, 500ms or 5m, got "soon"',
    ),
    ({"SERVICE_CHECK_TTL": "0s"}, "SERVICE_CHECK_TTL: expected a duration"),
    ({"SERVICE_CHECK_DEREGISTER_AFTER": "1d"}, "SERVICE_CHECK_DEREGISTER_AFTER: expected a duration"),
    (
        {"SERVICE_CHECK_GRPC": "host:99999"},
        "SERVICE_CHECK_GRPC: expected 1, a gRPC service name or HOST:PORT",
    ),
    (
        {"SERVICE_CHECK_TCP": "1", "SERVICE_CHECK_TTL": "5s"},
        "SERVICE_CHECK_TTL: one check per service, and SERVICE_CHECK_TCP is set too",
    ),
    ({"SERVICE_8081_TAGS": "x", "SERVICE_8081_CHECK_TCP": "maybe"}, "SERVICE_8081_CHECK_TCP: expected 1/0"),
    ({"SERVICE_8081_COLOUR": "x"}, "SERVICE_8081_COLOUR: unknown variable"),
]


@pytest.mark.parametrize(("variables", "message"), BAD_VALUES, ids=[next(iter(v)) for v, _ in BAD_VALUES])
def test_a_bad_value_stops_run_before_anything_starts_with_one_line_naming_it(
    consul_agent, tmp_path, variables, message
):
    started = tmp_path / "app-started"
    env = env_for(consul_agent, SERVICE_NAME="shop", SERVICE_PORT="8080", **variables)
    app = f"open({str(started)!r}, 'w').close()"
    result = subprocess.run(
        [
            sys.executable,
            str(ZIPAPP),
            "run",
            "--no-consul",
            "--no-haproxy",
            "--state-dir",
            str(tmp_path / "s"),
            "--",
            sys.executable,
            "-c",
            app,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"basenode: {message}"), result.stderr
    assert "hunter2" not in result.stderr
    assert not started.exists() and not (tmp_path / "s").exists()
    assert consul_agent.get("/v1/agent/services") == {}
