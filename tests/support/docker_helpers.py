"""The real Docker engine for tests/docker: images built from the project's own Dockerfile.

There is no registry here, so the base images are made from Debian's packages by
scripts/build-base-image.sh (debootstrap -> docker import) and tagged with the names the
Dockerfiles use. Building one costs about half a minute; the script does nothing when the
tag already exists, and `docker build` reuses its layer cache, so a second run is quick.
"""

from __future__ import annotations

import json
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
# The newer base: Debian trixie, whose packages give HAProxy 3.0 and Python 3.13. The image built
# on it is the same Dockerfile with `--build-arg DEBIAN_IMAGE=debian:trixie-slim`.
TRIXIE_BASE_IMAGE = "debian:trixie-slim"
TRIXIE_IMAGE = "basenode-test/trixie"
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
    return json.loads(docker("image", "inspect", tag).stdout)[0]


def ensure_base_image(suite: str, tag: str, packages: str = "") -> None:
    """Make `tag` from Debian `suite` unless it exists (the script returns at once then)."""
    cmd = [str(ROOT / "scripts" / "build-base-image.sh"), suite, tag]
    if packages:
        cmd.append(packages)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n{result.stderr[-3000:]}")


def build_image(
    tag: str, context: Path, dockerfile: Optional[Path] = None, build_args: Optional[Mapping[str, str]] = None
) -> str:
    """`docker build` (layer cache on); returns the image id."""
    cmd = ["build", "-q", "--label", TEST_LABEL, "-t", tag]
    if dockerfile is not None:
        cmd += ["-f", str(dockerfile)]
    for key, value in (build_args or {}).items():
        cmd += ["--build-arg", f"{key}={value}"]
    docker(*cmd, str(context), timeout=BUILD_TIMEOUT)
    # Each new zipapp leaves the previous build of our images untagged: drop those (only ours).
    docker("image", "prune", "-f", "--filter", f"label={TEST_LABEL}", check=False)
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


# --- networks and compose projects ------------------------------------------------------------


def free_subnet(prefix: str = "172.29.0.0/16") -> str:
    """A /24 in `prefix` that no Docker network uses, for a network whose addresses a test pins.

    A node that is disconnected and reconnected must get its old address back (its Consul
    agent is bound to it), and Docker only honours `--ip` on networks with a configured subnet.
    """
    import ipaddress

    ids = docker("network", "ls", "-q").stdout.split()
    used = []
    for net in json.loads(docker("network", "inspect", *ids).stdout) if ids else []:
        for cfg in (net.get("IPAM") or {}).get("Config") or []:
            if cfg.get("Subnet"):
                used.append(ipaddress.ip_network(cfg["Subnet"], strict=False))
    for candidate in ipaddress.ip_network(prefix).subnets(new_prefix=24):
        if not any(candidate.overlaps(u) for u in used if u.version == 4):
            return str(candidate)
    raise RuntimeError(f"no free /24 left in {prefix}")


@contextmanager
def network(subnet: Optional[str] = None) -> Iterator[str]:
    """A user-defined bridge network of our own, removed afterwards."""
    name = f"basenode-test-{uuid.uuid4().hex[:8]}"
    docker("network", "create", "--label", TEST_LABEL, "--subnet", subnet or free_subnet(), name)
    try:
        yield name
    finally:
        docker("network", "rm", name, check=False)


def container_ip(name: str, network_name: str) -> str:
    info = json.loads(docker("inspect", name).stdout)[0]
    return info["NetworkSettings"]["Networks"][network_name]["IPAddress"]


class Compose:
    """One docker-compose project: the repository's docker-compose.yml plus test overrides."""

    def __init__(self, files: Sequence[Path], project: Optional[str] = None) -> None:
        self.files = [Path(f) for f in files]
        self.project = project or f"bntest{uuid.uuid4().hex[:8]}"

    def __call__(
        self, *args: str, check: bool = True, timeout: float = BUILD_TIMEOUT
    ) -> subprocess.CompletedProcess:
        cmd = ["docker-compose", "--ansi", "never", "-p", self.project]
        for f in self.files:
            cmd += ["-f", str(f)]
        result = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker-compose {' '.join(args)} exited {result.returncode}\n{result.stderr[-3000:]}"
            )
        return result

    @property
    def network(self) -> str:
        return f"{self.project}_default"

    def container(self, service: str) -> str:
        cid = self("ps", "-q", service).stdout.strip()
        if not cid:
            raise AssertionError(f"no container for service {service} in {self.project}")
        return cid

    def logs(self, *services: str) -> str:
        result = self("logs", "--no-color", "--tail=60", *services, check=False)
        return result.stdout + result.stderr

    def down(self) -> None:
        self("down", "-v", "--remove-orphans", "-t", "5", check=False)
