"""The real Docker engine for tests/docker: images built from the project's own Dockerfile.

There is no registry here, so the base images are made from Debian's packages by
scripts/build-base-image.sh (debootstrap -> docker import) and tagged with the names the
Dockerfiles use. Building one costs about half a minute; the script does nothing when the
tag already exists, and `docker build` reuses its layer cache, so a second run is quick.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
ZIPAPP = ROOT / "dist" / "basenode"

# The base the Dockerfile's FROM names; a local stand-in made by debootstrap.
BASE_IMAGE = "debian:bookworm-slim"
# The image `make image` builds.
IMAGE = "basenode"
# A second, older base for the drop-in test: Debian bullseye with its python3 (3.9). The
# tag says what it is: it is not a debian:* image, because a real one has no python3.
BULLSEYE_PYTHON_IMAGE = "basenode-test/bullseye-python3"

# Every container and image a test makes carries this label, so a crashed run can be
# cleaned up by label (`docker rm -f $(docker ps -aq -f label=...)`) without touching others.
TEST_LABEL = "org.basenode.test=1"

BUILD_TIMEOUT = 900.0
RUN_TIMEOUT = 120.0


def require_docker() -> None:
    """Docker is a component these tests cannot do without: fail loudly, never skip."""
    if shutil.which("docker") is None:
        pytest.fail("docker not found on PATH: tests/docker need the Docker engine", pytrace=False)
    probe = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0:
        pytest.fail(f"the Docker engine does not answer: {probe.stderr.strip()}", pytrace=False)


def docker(
    *args: str, check: bool = True, timeout: float = RUN_TIMEOUT, input_text: Optional[str] = None
) -> subprocess.CompletedProcess:
    """`docker ARGS`, output captured as text; a failure (when check) shows docker's stderr."""
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, input=input_text
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} exited {result.returncode}\n"
            f"stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"
        )
    return result


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False).returncode == 0


def inspect_image(tag: str) -> dict:
    import json

    return json.loads(docker("image", "inspect", tag).stdout)[0]


def ensure_base_image(suite: str, tag: str, packages: str = "") -> None:
    """Make `tag` from Debian `suite` unless it exists (the script returns at once then)."""
    cmd = [str(ROOT / "scripts" / "build-base-image.sh"), suite, tag]
    if packages:
        cmd.append(packages)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n{result.stderr[-3000:]}")


def build_image(tag: str, context: Path, dockerfile: Optional[Path] = None) -> str:
    """`docker build` (layer cache on); returns the image id."""
    cmd = ["build", "-q", "--label", TEST_LABEL, "-t", tag]
    if dockerfile is not None:
        cmd += ["-f", str(dockerfile)]
    docker(*cmd, str(context), timeout=BUILD_TIMEOUT)
    return docker("image", "inspect", "-f", "{{.Id}}", tag).stdout.strip()


def build_project_image() -> str:
    """The image `make image` builds: the repository's Dockerfile on the local base."""
    if not ZIPAPP.exists():
        pytest.fail(f"{ZIPAPP} is missing; run `make zipapp`", pytrace=False)
    ensure_base_image("bookworm", BASE_IMAGE)
    return build_image(IMAGE, ROOT)


def run(
    image: str, *args: str, entrypoint: Optional[str] = None, options: Sequence[str] = ()
) -> subprocess.CompletedProcess:
    """`docker run --rm IMAGE ARGS` to completion; the caller checks the exit status."""
    cmd = ["run", "--rm", "--label", TEST_LABEL, *options]
    if entrypoint is not None:
        cmd += ["--entrypoint", entrypoint]
    return docker(*cmd, image, *args, check=False)


def sh(image: str, script: str, options: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """A shell script inside a throw-away container of `image`, entrypoint bypassed."""
    return run(image, "-c", script, entrypoint="/bin/sh", options=options)


@contextmanager
def container(
    image: str,
    *args: str,
    env: Optional[Mapping[str, str]] = None,
    options: Sequence[str] = (),
    name_prefix: str = "basenode-test",
) -> Iterator[str]:
    """A detached container, removed (with its anonymous volumes) however the test ends."""
    name = f"{name_prefix}-{uuid.uuid4().hex[:8]}"
    cmd: List[str] = ["run", "-d", "--name", name, "--label", TEST_LABEL, *options]
    for key, value in (env or {}).items():
        cmd += ["-e", f"{key}={value}"]
    docker(*cmd, image, *args)
    try:
        yield name
    finally:
        docker("rm", "-f", "-v", name, check=False)


def exec_in(name: str, *cmd: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    return docker("exec", name, *cmd, check=False, timeout=timeout)


def logs(name: str) -> str:
    result = docker("logs", name, check=False)
    return result.stdout + result.stderr


def process_users(name: str) -> Dict[str, List[str]]:
    """Command name -> effective user names of the processes running in container `name`.

    Read from the Uid: line of /proc/PID/status: a process that changed its user is not
    "dumpable", and its /proc directory then shows root as owner whatever it runs as.
    """
    script = (
        "import os, pwd\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        status = dict(l.split(':', 1) for l in open(f'/proc/{pid}/status'))\n"
        "    except OSError:\n"
        "        continue\n"
        "    euid = int(status['Uid'].split()[1])\n"
        "    print(status['Name'].strip(), pwd.getpwuid(euid).pw_name)\n"
    )
    out = exec_in(name, "python3", "-c", script).stdout
    users: Dict[str, List[str]] = {}
    for line in out.splitlines():
        comm, user = line.rsplit(" ", 1)
        users.setdefault(comm, []).append(user)
    return users
