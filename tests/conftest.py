"""Shared fixtures; the real components (Consul agent, HAProxy, backends, Docker) come from tests/support."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Real-component fixtures shared by every test folder (consul_agent, consul_agent_session;
# start_basenode, backends; supervisor).
pytest_plugins = ["tests.support.consul_agent", "tests.support.basenode_run", "tests.support.supervisor_node"]

ROOT = Path(__file__).resolve().parent.parent
ZIPAPP = ROOT / "dist" / "basenode"

# `make` puts .deps/bin (Consul) on PATH; a bare `pytest` should find it too.
os.environ["PATH"] = f"{ROOT / '.deps' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"


def require_binary(name: str) -> str:
    """A component the suite cannot do without: fail loudly (never skip) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH; run `make deps`", pytrace=False)
    return path


@pytest.fixture(scope="session")
def zipapp() -> Path:
    if not ZIPAPP.exists():
        pytest.fail(f"{ZIPAPP} is missing; run `make zipapp`", pytrace=False)
    return ZIPAPP
