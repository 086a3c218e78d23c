"""The same Dockerfile on Debian trixie: HAProxy 3.0 and Python 3.13, the discovery acceptance inside.

`scripts/build-base-image.sh trixie debian:trixie-slim` makes the base (no registry here), then the
repository's Dockerfile is built with `--build-arg DEBIAN_IMAGE=debian:trixie-slim`. The checks run
inside one container of it (tests/docker/discovery_driver.py, with the image's own python3), so
they meet HAProxy 3.0's runtime API and master CLI, not the host's 2.6.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

from tests.support import docker_helpers as dh
from tests.support.waiting import eventually

pytestmark = pytest.mark.docker

DRIVER = Path(__file__).with_name("discovery_driver.py")
WEB_PORT, KV_PORT = 9302, 9303
CHANGES = 200


@pytest.fixture(scope="module")
def trixie_image(docker_engine: None) -> str:
    if not dh.ZIPAPP.exists():
        pytest.fail(f"{dh.ZIPAPP} is missing; run `make zipapp`", pytrace=False)
    dh.ensure_base_image("trixie", dh.TRIXIE_BASE_IMAGE)
    dh.build_image(dh.TRIXIE_IMAGE, dh.ROOT, build_args={"DEBIAN_IMAGE": dh.TRIXIE_BASE_IMAGE})
    return dh.TRIXIE_IMAGE


@pytest.fixture(scope="module")
def discovery(trixie_image: str) -> Iterator[Dict[str, Any]]:
    """One single-server container and what the driver saw in it."""
    env = {"CONSUL_SERVER": "1", "CONSUL_BOOTSTRAP_EXPECT": "1", "BASENODE_ROUTES": f"web:{WEB_PORT}/http"}
    with dh.container(trixie_image, "--", "sleep", "infinity", env=env) as name:
        try:
            eventually(
                lambda: dh.exec_in(name, "basenode", "health").returncode == 0,
                timeout=90,
                interval=0.5,
                what="basenode health to pass",
            )
        except AssertionError:
            raise AssertionError(dh.logs(name)[-4000:]) from None
        dh.docker("cp", str(DRIVER), f"{name}:/tmp/discovery_driver.py")
        run = dh.exec_in(
            name,
            "python3",
            "/tmp/discovery_driver.py",
            str(WEB_PORT),
            str(KV_PORT),
            str(CHANGES),
            timeout=600,
        )
        assert run.returncode == 0, f"{run.stderr[-3000:]}\n--- container log ---\n{dh.logs(name)[-4000:]}"
        result = json.loads(run.stdout.strip().splitlines()[-1])
        result["haproxy_version"] = dh.exec_in(name, "haproxy", "-v").stdout
        result["log"] = dh.logs(name)
        yield result


def test_the_trixie_image_carries_haproxy_30_and_python_313(discovery: Dict[str, Any]) -> None:
    assert re.match(r"HAProxy version 3\.0\.", discovery["haproxy_version"]), discovery["haproxy_version"]
    assert discovery["python"].startswith("3.13."), discovery["python"]


def test_on_haproxy_30_traffic_follows_registrations_with_no_reload(discovery: Dict[str, Any]) -> None:
    before, after = discovery["before"], discovery["after_changes"]
    assert (after["reloads"], after["workers"]) == (before["reloads"], before["workers"]), discovery
    assert "applied by runtime" in discovery["log"]


def test_on_haproxy_30_200_membership_changes_under_load_fail_no_request(discovery: Dict[str, Any]) -> None:
    assert discovery["changes"] == CHANGES
    assert discovery["failure_count"] == 0, discovery["failures"]
    assert discovery["ok"] > CHANGES


def test_on_haproxy_30_a_kv_route_appears_through_one_seamless_reload(discovery: Dict[str, Any]) -> None:
    after_changes, after_kv = discovery["after_changes"], discovery["after_kv"]
    assert after_kv["reloads"] == after_changes["reloads"] + 1, discovery
    assert discovery["web_after_kv"] == ["a", "b", "c", "d"]  # the static route kept serving
