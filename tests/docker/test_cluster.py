"""A real cluster on the Docker engine: docker-compose.yml's 1 server + 2 apps + 1 client.

Every node is the project's image. The client reaches the `hello` apps only through its own
HAProxy on 127.0.0.1:9302, exactly as an application in the client container would.
Measured times (join, drop, rejoin) are written to build/docker-figures.json for
docs/benchmarks.md; no test asserts on them.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections import Counter
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from tests.support import docker_helpers as dh
from tests.support.docker_load import DRAIN_LINE, ClientLoad, stamp_seconds
from tests.support.waiting import eventually

pytestmark = pytest.mark.docker

ROUTE_URL = "http://127.0.0.1:9302/"
APPS = ("app1", "app2")
FIGURES = dh.ROOT / "build" / "docker-figures.json"
# app1's drain: an upper bound far above what a drain needs here, so that one ending before it is
# one that ended because the node went quiet.
DRAIN_BOUND = 10


def record_figure(name: str, seconds: float) -> None:
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    figures.setdefault(name, []).append(round(seconds, 3))
    FIGURES.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


def answers(client: str, count: int = 8, timeout: float = 5.0) -> Tuple[Counter, int]:
    """`count` requests from inside `client` through its HAProxy: hostnames seen, failures."""
    argv = ("python3", "/demo/fetch.py", ROUTE_URL, str(count), str(timeout))
    result = dh.exec_in(client, *argv, timeout=count * (timeout + 1) + 10)
    seen: Counter = Counter()
    for line in result.stdout.splitlines():
        n, _, text = line.strip().partition("  ")
        if text.startswith("hello from "):
            seen[text[len("hello from ") :]] = int(n)
    return seen, result.stderr.count("failed:")


def routed_hosts(client: str, count: int = 8, timeout: float = 5.0) -> set:
    """The hosts that answered, or nothing when any request failed."""
    seen, failures = answers(client, count, timeout)
    return set(seen) if failures == 0 else set()


def members(server: str) -> Dict[str, str]:
    """Node name -> serf status (alive, failed, left), as the Consul server sees them."""
    out = dh.exec_in(server, "consul", "members").stdout
    return {cols[0]: cols[2] for cols in (line.split() for line in out.splitlines()[1:]) if len(cols) > 2}


def hello_nodes(server: str) -> List[str]:
    """Nodes the catalog has a `hello` instance on (passing or not)."""
    out = dh.exec_in(server, "consul", "catalog", "nodes", "-service=hello").stdout
    return [line.split()[0] for line in out.splitlines()[1:] if line.strip()]


def wait_until(probe, timeout: float, what: str, compose: dh.Compose) -> float:
    """eventually(), plus the cluster's recent logs when it times out; returns seconds taken."""
    start = time.monotonic()
    try:
        eventually(probe, timeout=timeout, interval=0.25, what=what)
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- logs ---\n{compose.logs()[-6000:]}") from None
    return time.monotonic() - start


@pytest.fixture(scope="module")
def cluster(basenode_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dh.Compose]:
    # The repository's compose file, on a network with a fixed subnet (see free_subnet).
    override = tmp_path_factory.mktemp("compose") / "network.yml"
    override.write_text(
        'version: "3.8"\n'
        f'services:\n  app1:\n    environment:\n      BASENODE_DRAIN: "{DRAIN_BOUND}"\n'
        "networks:\n  default:\n    ipam:\n      config:\n"
        f"        - subnet: {dh.free_subnet()}\n"
    )
    compose = dh.Compose([dh.ROOT / "docker-compose.yml", override])
    try:
        started = time.monotonic()
        compose("up", "-d", "--build")
        client = compose.container("client")
        wait_until(
            lambda: routed_hosts(client) >= set(APPS), 90, "the client to reach app1 and app2", compose
        )
        record_figure("cluster up -> client routes to both apps (s)", time.monotonic() - started)
        yield compose
    finally:
        compose.down()


@pytest.fixture()
def steady(cluster: dh.Compose) -> dh.Compose:
    """The whole cluster up and both apps routed, whatever an earlier test left behind."""
    cluster("start")
    client = cluster.container("client")
    wait_until(lambda: routed_hosts(client) == set(APPS), 60, "app1 and app2 (only) to be routed", cluster)
    return cluster


def test_the_client_reaches_every_app_through_its_own_localhost(cluster: dh.Compose) -> None:
    seen, failures = answers(cluster.container("client"), count=20)
    assert failures == 0
    assert set(seen) == set(APPS)


def stop_under_load(
    cluster: dh.Compose, meanwhile: Optional[Callable[[], None]] = None
) -> Tuple[str, float, float]:
    """`docker stop` app1 while the client sends steady load through its HAProxy (and runs
    `meanwhile` during the stop); every request must succeed. The drain's reason, its length and
    the wall-clock time it ended, from app1's log."""
    client, app1, server = (cluster.container(s) for s in ("client", "app1", "server"))
    with ClientLoad(client, ROUTE_URL, 20000, 90) as load:
        # drain bound + 10 s: if basenode has not exited by then, docker kills it (status 137).
        started = time.monotonic()
        stop = subprocess.Popen(
            ["docker", "stop", "-t", str(DRAIN_BOUND + 10), app1], stdout=subprocess.DEVNULL
        )
        if meanwhile is not None:
            meanwhile()
        assert stop.wait(timeout=60) == 0
        record_figure("docker stop of an app node (s)", time.monotonic() - started)
        assert dh.docker("inspect", "-f", "{{.State.ExitCode}}", app1).stdout.strip() == "0"
        result, err = load.finish(timeout=120)
    assert result["failed"] == [], err
    assert result["ok"].get("app1", 0) > 0 and result["ok"].get("app2", 0) > 0
    assert "app1" not in hello_nodes(server)
    logs = dh.docker("logs", "-t", app1, check=False)
    drains = [(line, DRAIN_LINE.search(line)) for line in (logs.stdout + logs.stderr).splitlines()]
    drains = [(line, m) for line, m in drains if m]
    assert drains, (logs.stdout + logs.stderr)[-3000:]
    line, found = max(drains, key=lambda d: d[0])  # the latest: the container's log holds earlier runs
    return found.group(2), float(found.group(1)), stamp_seconds(line.split(" ", 1)[0])


def test_stopping_an_app_node_drains_it_and_no_client_request_fails(steady: dh.Compose) -> None:
    cluster = steady
    reason, took, _ = stop_under_load(cluster)
    # Every node dropped app1 within moments: the drain ended as soon as its port went quiet.
    assert reason in ("quiet", "open connections finished") and took < DRAIN_BOUND
    record_figure("drain of an app node under load (s)", took)

    # Started again, it rejoins and takes traffic.
    dh.docker("start", cluster.container("app1"))
    wait_until(
        lambda: routed_hosts(cluster.container("client")) >= set(APPS), 60, "app1 to be routed again", cluster
    )


SLOW_PEER_SECONDS = 3.0


def test_a_slow_peer_makes_the_drain_wait_for_it_and_no_client_request_fails(steady: dh.Compose) -> None:
    """The client's sync loop is stopped (SIGSTOP) from just before app1 stops until 3 s later: the
    client's HAProxy keeps sending to app1 until the loop runs again and applies the deregistration."""
    cluster = steady
    client = cluster.container("client")
    sync_pid = dh.exec_in(client, "python3", "-c", FIND_SYNC).stdout.strip()
    assert sync_pid.isdigit(), f"no `basenode sync` process in the client: {sync_pid!r}"
    resumed: List[float] = []

    def slow_peer() -> None:
        try:
            time.sleep(SLOW_PEER_SECONDS)
        finally:
            resumed.append(time.time())
            signal_in(client, "CONT", sync_pid)

    assert signal_in(client, "STOP", sync_pid).returncode == 0
    try:
        reason, took, ended = stop_under_load(cluster, slow_peer)
    finally:
        signal_in(client, "CONT", sync_pid)
    # It could not end while the client still routed to app1, and it ended once the client caught up.
    assert ended >= resumed[0], (reason, took, ended - resumed[0])
    assert reason in ("quiet", "open connections finished") and took < DRAIN_BOUND
    record_figure("drain of an app node whose peer is stopped for 3 s (s)", took)

    dh.docker("start", cluster.container("app1"))
    wait_until(lambda: routed_hosts(client) >= set(APPS), 60, "app1 to be routed again", cluster)


def signal_in(container: str, name: str, pid: str) -> subprocess.CompletedProcess:
    return dh.exec_in(container, "sh", "-c", f"kill -{name} {pid}")  # the shell's kill: no procps here


# The pid of `basenode sync` in a container, from /proc (the image has no pgrep).
FIND_SYNC = r"""
import os
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        argv = open("/proc/%s/cmdline" % pid, "rb").read().split(b"\0")
    except OSError:
        continue
    if b"sync" in argv and any(a.endswith(b"basenode") for a in argv):
        print(pid)
        break
"""


def test_a_new_app_node_receives_traffic(steady: dh.Compose) -> None:
    cluster = steady
    client = cluster.container("client")
    env = {"CONSUL_JOIN": "server", "BASENODE_ROUTES": "hello:9302/http"}
    options = ["--network", cluster.network, "--hostname", "app3"]
    with dh.container("basenode-hello", env=env, options=options) as app3:
        took = wait_until(lambda: "app3" in routed_hosts(client), 60, "app3 to be routed", cluster)
        record_figure("new app container started -> routed on the client (s)", took)
        dh.docker("stop", "-t", "5", app3, timeout=30)


def test_a_disconnected_node_leaves_routing_and_returns_on_reconnect(steady: dh.Compose) -> None:
    cluster = steady
    client, app2, server = (cluster.container(s) for s in ("client", "app2", "server"))
    address = dh.container_ip(app2, cluster.network)
    started = time.monotonic()
    dh.docker("network", "disconnect", cluster.network, app2)
    try:
        # Gone once every request succeeds quickly and none reaches app2: a request sent to
        # the cut-off node could only fail or wait for a connect timeout (longer than 1.5 s).
        wait_until(
            lambda: routed_hosts(client, 6, timeout=1.5) == {"app1"},
            60,
            "app2 to leave the client's routing",
            cluster,
        )
        record_figure("network disconnect -> dropped from routing (s)", time.monotonic() - started)
        wait_until(lambda: members(server).get("app2") == "failed", 60, "Consul to mark app2 failed", cluster)
    finally:
        dh.docker("network", "connect", "--ip", address, cluster.network, app2)
    took = wait_until(lambda: "app2" in routed_hosts(client), 60, "app2 to be routed again", cluster)
    record_figure("network reconnect -> routed again (s)", took)


def test_the_seed_link_variable_alone_joins_a_node(cluster: dh.Compose) -> None:
    server = cluster.container("server")
    env = {"CONSULSERVER_1_PORT_8500_TCP_ADDR": dh.container_ip(server, cluster.network)}
    options = ["--network", cluster.network, "--hostname", "linked"]
    with dh.container(dh.IMAGE, env=env, options=options):
        wait_until(lambda: members(server).get("linked") == "alive", 60, "the linked node to join", cluster)


def gossip_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_with_a_gossip_key_the_cluster_forms_and_a_wrong_key_is_refused(basenode_image: str) -> None:
    key, wrong = gossip_key(), gossip_key()
    with dh.network() as net:
        server_env = {"CONSUL_SERVER": "1", "CONSUL_BOOTSTRAP_EXPECT": "1", "CONSUL_ENCRYPT": key}
        node = {"CONSUL_JOIN": "server", "CONSUL_ENCRYPT": key}
        bad = {"CONSUL_JOIN": "server", "CONSUL_ENCRYPT": wrong}

        def opts(host: str) -> List[str]:
            return ["--network", net, "--hostname", host, "--network-alias", host]

        with (
            dh.container(basenode_image, env=server_env, options=opts("server")) as server,
            dh.container(basenode_image, env=node, options=opts("good")),
            dh.container(basenode_image, env=bad, options=opts("bad")) as bad_node,
        ):
            eventually(lambda: members(server).get("good") == "alive", 60, 0.25, "the keyed node to join")
            eventually(lambda: "decrypt" in dh.logs(bad_node), 60, 0.25, "the wrong-key node to say why")
            assert "bad" not in members(server)
