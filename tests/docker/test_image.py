"""The image `make image` builds: what is in it, what is not, and how it starts."""

from __future__ import annotations

import re

import pytest

from tests.support import docker_helpers as dh
from tests.support.terminal import Terminal
from tests.support.waiting import eventually

pytestmark = pytest.mark.docker


def test_image_builds_from_the_repository_dockerfile_on_the_base_it_names() -> None:
    dh.build_project_image()
    image = dh.inspect_image(dh.IMAGE)
    base = dh.inspect_image(dh.BASE_IMAGE)
    # FROM debian:bookworm-slim resolved to the local stand-in: its layers come first.
    base_layers = base["RootFS"]["Layers"]
    assert image["RootFS"]["Layers"][: len(base_layers)] == base_layers
    config = image["Config"]
    assert config["Entrypoint"] == ["basenode", "run"]
    assert config["Healthcheck"]["Test"] == ["CMD", "basenode", "health"]


def test_image_exposes_only_consul_gossip_and_server_rpc(basenode_image: str) -> None:
    exposed = dh.inspect_image(basenode_image)["Config"]["ExposedPorts"]
    assert sorted(exposed) == ["8300/tcp", "8301/tcp", "8301/udp"]


def test_docker_run_version_prints_basenode_and_its_python(basenode_image: str) -> None:
    result = dh.run(basenode_image, "version")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"basenode \d+\.\d+\.\d+\S*", lines[0])
    assert re.match(r"python 3\.11\.\d+ \(CPython, /usr/bin/python3\)", lines[1])


def test_image_carries_haproxy_26_and_consul_187(basenode_image: str) -> None:
    result = dh.sh(basenode_image, "haproxy -v; consul version")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^HAProxy version 2\.6\.", result.stdout, re.M)
    assert re.search(r"^Consul v1\.8\.7$", result.stdout, re.M)


def test_image_has_no_ssh_server_and_no_keys(basenode_image: str) -> None:
    # Names an SSH setup would leave, then any PEM private key anywhere on the root fs.
    script = r"""
        command -v sshd ssh-keygen dropbear || true
        dpkg-query -W -f='${db:Status-Status} ${Package}\n' 'openssh-*' 'dropbear*' 2>/dev/null \
            | grep '^installed' || true
        find / -xdev \( -name authorized_keys -o -name 'authorized_keys2' -o -name 'ssh_host_*' \
            -o -name 'id_rsa*' -o -name 'id_ecdsa*' -o -name 'id_ed25519*' -o -name '*.key' \) -print
        grep -rlI --exclude-dir=proc --exclude-dir=sys 'PRIVATE KEY-----' / 2>/dev/null || true
    """
    result = dh.sh(basenode_image, script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []


def test_haproxy_user_is_unprivileged_and_cannot_log_in(basenode_image: str) -> None:
    result = dh.sh(basenode_image, "getent passwd haproxy")
    assert result.returncode == 0, result.stderr
    _name, _pw, uid, gid, _gecos, _home, shell = result.stdout.strip().split(":")
    assert int(uid) != 0 and int(gid) != 0
    assert shell in ("/usr/sbin/nologin", "/bin/false")


def test_basenode_runs_as_any_user_on_a_read_only_root(basenode_image: str) -> None:
    # The bundled packages were unpacked at build time, so nothing needs writing.
    result = dh.run(
        basenode_image, "version", entrypoint="basenode", options=["--read-only", "--user", "65534"]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("basenode ")


def test_a_single_server_container_becomes_healthy_with_haproxy_workers_unprivileged(
    basenode_image: str,
) -> None:
    env = {
        "CONSUL_SERVER": "1",
        "CONSUL_BOOTSTRAP_EXPECT": "1",
        "BASENODE_ROUTES": "web:9302/http",
    }
    with dh.container(basenode_image, env=env) as name:

        def healthy() -> bool:
            return dh.exec_in(name, "basenode", "health").returncode == 0

        try:
            eventually(healthy, timeout=60, interval=0.5, what="basenode health to pass")
        except AssertionError:
            raise AssertionError(dh.logs(name)[-4000:]) from None
        users = dh.process_users(name)
        # HAProxy's master stays root to re-bind on reload; every worker is `haproxy`.
        haproxy = users.get("haproxy", [])
        assert haproxy.count("root") == 1, users
        assert haproxy.count("haproxy") >= 1, users


def test_docker_run_t_gives_the_application_the_terminal_as_tini_would(basenode_image: str) -> None:
    app = ["--no-consul", "--no-haproxy", "--", "sh", "-c", "test -t 0 && test -t 1 && test -t 2"]
    result = dh.run(basenode_image, *app, options=["-t"])
    assert result.returncode == 0, result.stdout + result.stderr
    # Without -t, stdout is docker's pipe: the same check fails, so the one above proves the terminal.
    assert dh.run(basenode_image, *app).returncode == 1


def test_the_image_healthcheck_passes_with_basenode_as_a_plain_supervisor(basenode_image: str) -> None:
    # No Consul, no HAProxy, no sync loop: the HEALTHCHECK's `basenode health` asks PID 1 directly.
    options = ["--health-interval", "1s", "--health-start-period", "0s"]
    with dh.container(
        basenode_image, "--no-consul", "--no-haproxy", "--", "sleep", "600", options=options
    ) as name:

        def health_status() -> str:
            return dh.docker("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip()

        try:
            eventually(lambda: health_status() == "healthy", timeout=60, interval=0.5, what="docker's health")
        except AssertionError:
            raise AssertionError(dh.logs(name)[-4000:]) from None
        status = dh.exec_in(name, "basenode", "status", "--json")
        assert status.returncode == 0, status.stderr
        assert '"app"' in status.stdout


def test_docker_run_it_gives_an_interactive_shell_with_job_control(basenode_image: str) -> None:
    # `docker run -it image -- sh -i` from a real terminal, as a user types it.
    argv = ["docker", "run", "--rm", "-it", "--label", dh.TEST_LABEL, basenode_image]
    term = Terminal([*argv, "--no-consul", "--no-haproxy", "--", "sh", "-i"])
    try:
        term.write(b"echo shell-$((6 * 7))\n")
        term.wait_for("shell-42", timeout=60)
        term.write(b"head -n 1\n")  # a foreground job reading the terminal
        term.write(b"typed-line\n")
        term.write(b'echo "head said $?"\n')
        term.wait_for("head said 0")
        term.write(b"exit 5\n")
        assert term.wait(timeout=60) == 5, term.text()
    finally:
        term.close()
