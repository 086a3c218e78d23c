"""basenode drops into an image it was not built for: only python3 (>= 3.9) is needed.

The second base is Debian bullseye with its own python3 (3.9), made by debootstrap like the
main base. The lines added to it are the ones the README shows.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.support import docker_helpers as dh

pytestmark = pytest.mark.docker

DROP_IN_IMAGE = "basenode-test/dropin-bullseye"

# What a user adds to an existing image's Dockerfile (the README shows the same lines).
DROP_IN_LINES = """\
COPY dist/basenode /usr/local/bin/basenode
ENTRYPOINT ["basenode", "run"]
"""


@pytest.fixture(scope="module")
def dropin_image(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    if not dh.ZIPAPP.exists():
        pytest.fail(f"{dh.ZIPAPP} is missing; run `make zipapp`", pytrace=False)
    dh.ensure_base_image("bullseye", dh.BULLSEYE_PYTHON_IMAGE, "python3")
    context: Path = tmp_path_factory.mktemp("dropin")
    (context / "dist").mkdir()
    shutil.copy2(dh.ZIPAPP, context / "dist" / "basenode")
    (context / "Dockerfile").write_text(f"FROM {dh.BULLSEYE_PYTHON_IMAGE}\n{DROP_IN_LINES}")
    dh.build_image(DROP_IN_IMAGE, context)
    return DROP_IN_IMAGE


def test_the_second_base_really_has_python_39(dropin_image: str) -> None:
    result = dh.run(dropin_image, "--version", entrypoint="python3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Python 3.9.")


def test_basenode_version_runs_on_python_39_after_adding_two_lines(dropin_image: str) -> None:
    result = dh.run(dropin_image, "version", entrypoint="basenode")
    assert result.returncode == 0, result.stderr
    assert re.match(r"basenode \S+\npython 3\.9\.\d+ \(CPython, /usr/bin/python3\)\n", result.stdout)
    # Every bundled package imports on 3.9, not only the command line.
    for package in ("py-consul", "jinja2", "tomli"):
        assert re.search(rf"^{package} \S+$", result.stdout, re.M), package


def test_pid1_on_python_39_exits_with_the_application_status(dropin_image: str) -> None:
    # The image has no HAProxy or Consul: basenode only supervises the application here.
    result = dh.run(dropin_image, "--no-consul", "--no-haproxy", "--", "sh", "-c", "exit 3")
    assert result.returncode == 3, result.stderr
