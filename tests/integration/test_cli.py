"""The command line as a user meets it: the zipapp, real child processes, exit statuses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ZIPAPP


def basenode(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BASENODE_", "CONSUL_"))}
    base["BASENODE_CONFIG"] = os.devnull
    return subprocess.run(
        [sys.executable, str(ZIPAPP), *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_dockerfile_cmd_without_double_dash_is_the_application_command(zipapp):
    out = basenode("run", "--no-consul", "--no-haproxy", "sh", "-c", "echo hello; exit 3")
    assert out.returncode == 3
    assert out.stdout == "hello\n"
    out = basenode("run", "--no-consul", "--no-haproxy", "echo", "--", "after")
    assert out.returncode == 0 and out.stdout == "-- after\n"


def test_bad_input_stops_before_anything_starts(zipapp, tmp_path: Path):
    marker = tmp_path / "started"
    config = tmp_path / "basenode.toml"
    config.write_text(
        f'[programs.side]\ncommand = ["touch", "{marker}"]\n'
        '[programs.web]\ncommand = ["sleep", "1"]\nstop_timeout = "soon"\n'
    )
    out = basenode("run", "--no-consul", "--no-haproxy", "--config", str(config), "--", "touch", str(marker))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f'basenode: {config}:5: programs.web.stop_timeout: expected a number of seconds, got "soon"'
    ]
    assert out.stdout == ""
    assert not marker.exists()


def test_each_bad_input_gets_one_line_naming_its_source(zipapp, tmp_path: Path):
    cases = [
        (
            ["run", "--no-consul", "--no-haproxy", "--bind", "0.0.0"],
            {},
            'basenode: --bind: expected an IP address, got "0.0.0"',
        ),
        (
            ["run", "--no-consul", "--no-haproxy"],
            {"BASENODE_ROUTES": "web:99999"},
            'basenode: BASENODE_ROUTES: route "web:99999": expected a port 1-65535, got "99999"',
        ),
        (
            ["run", "--no-consul", "--no-haproxy", "--", "no-such-command-xyz"],
            {},
            'basenode: COMMAND: command "no-such-command-xyz" not found',
        ),
        (
            ["run", "--no-consul", "--haproxy-bin", "/nonexistent"],
            {},
            'basenode: --haproxy-bin: haproxy binary "/nonexistent" not found (or use --no-haproxy)',
        ),
    ]
    for args, env, message in cases:
        out = basenode(*args, env=env)
        assert (out.returncode, out.stderr.strip().splitlines()) == (2, [message])


def test_version_names_basenode_python_and_every_bundled_package(zipapp):
    out = basenode("version")
    assert out.returncode == 0
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert names[:2] == ["basenode", "python"]
    assert {"py-consul", "requests", "urllib3", "jinja2", "markupsafe", "tomli"} <= set(names)


def test_docker_run_image_version_reaches_basenode_version_through_the_run_entrypoint(zipapp):
    # ENTRYPOINT ["basenode", "run"] + `docker run IMAGE version` = `basenode run version`
    out = basenode("run", "version")
    assert out.returncode == 0 and out.stdout.startswith("basenode ")
