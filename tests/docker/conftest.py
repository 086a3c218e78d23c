"""Fixtures for tests against the real Docker engine (see tests/support/docker_helpers.py)."""

from __future__ import annotations

import pytest

from tests.support import docker_helpers as dh


@pytest.fixture(scope="session", autouse=True)
def docker_engine() -> None:
    """Every test here needs the engine: without it they fail, they never skip."""
    dh.require_docker()


@pytest.fixture(scope="session")
def basenode_image(docker_engine: None) -> str:
    """The project's image, built once per session from the repository's Dockerfile."""
    dh.build_project_image()
    return dh.IMAGE
