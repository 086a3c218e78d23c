"""Docker figures of issue 4: image size, start -> routed, a new instance cluster-wide, a lost node.

A cluster of the project's own image on the Docker engine of this machine, on a network of our own:
one Consul server, two `hello` app nodes (examples/hello, the cluster demo's app) and one client,
every node with the route `hello:9302/http`, as in docker-compose.yml. Four tables:

1. image sizes: the base (`debian:bookworm-slim`, here a local debootstrap stand-in) and the final
   `basenode` image, layer by layer, next to the seed's documented phusion/baseimage figure;
2. `docker start` of a client node -> first request routed through its own HAProxy, stage by stage;
3. `docker start` of a new app node -> its check passing in the catalog -> routed on every other node;
4. `docker network disconnect` of an app node -> dropped on every other node; reconnect -> routed again.

All times are wall-clock readings (`time.time()`) taken on the host and inside the containers: they
share the host's kernel clock (Docker gives containers no time namespace), so they compare directly.
Inside the containers, small Python scripts watch what matters and print one JSON line per change:
a blocking query on the server's agent (the catalog), and a 10 ms poll of each node's HAProxy
runtime API (`show servers state`), which is what routes that node's requests.

Every container and the network carry the labels `org.basenode.bench=1` and a per-run
`org.basenode.bench.run=<id>`; they are removed by that run label however the family ends.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from bench.common import ROOT, Context, Processes, Section, Table, fmt, median, ratio
from tests.support import docker_helpers
from tests.support.docker_helpers import docker
from tests.support.docker_load import stamp_seconds

TITLE = "Docker cluster: image, start, join, failure (issue 4)"

IMAGE = "basenode"  # what `make image` builds
APP_IMAGE = "basenode-hello"  # examples/hello, the cluster demo's app (FROM basenode)
BASE_IMAGE = "debian:bookworm-slim"  # the Dockerfile's FROM; here scripts/build-base-image.sh makes it
# The seed's base: phusion/baseimage 0.9.x "was about 300 MB before the seed added anything" (issue 4).
# A documented figure: there is no registry here to pull it from.
SEED_BASE_MB = 300.0

SERVICE = "hello"
ROUTE_PORT = 9302
ROUTES = f"{SERVICE}:{ROUTE_PORT}/http"
STATS_SOCKET = "/run/basenode/haproxy.sock"  # the image's BASENODE_STATE_DIR + haproxy.sock
LABEL = "org.basenode.bench"
SUBNETS = "172.30.0.0/16"  # a /24 of it that no Docker network uses (addresses are pinned, see Cluster)

START_TARGET = 3.0  # issue 4: container start -> routed through its HAProxy
ROUTE_TARGET = 1.0  # issue 4: health check passing -> routed cluster-wide
EVENT_TIMEOUT = 45.0  # longest wait for any one event before the trial counts as timed out
BUILD_TIMEOUT = 900.0

# --- scripts run inside the containers (python3 of the image, standard library only) -------------

# On the server: blocking queries on /v1/health/service/<service> against the server's agent; one
# line {"t", "nodes": {node: passing|warning|critical}} whenever the instances or their checks change
# (node checks such as serfHealth included: a failed node's instance turns critical).
WATCH_CATALOG = r"""
import json, sys, time, urllib.request
service, seconds = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + seconds
index, last = 0, None
while time.monotonic() < deadline:
    url = "http://127.0.0.1:8500/v1/health/service/%s?index=%d&wait=5s" % (service, index)
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            new = int(response.headers.get("X-Consul-Index") or 0)
            entries = json.load(response)
    except Exception:
        time.sleep(0.05)
        continue
    t = time.time()
    index = new if new >= index else 0  # an index that goes backwards starts over
    nodes = {}
    for entry in entries:
        statuses = [c["Status"] for c in entry["Checks"]]
        status = "critical" if "critical" in statuses else ("warning" if "warning" in statuses else "passing")
        nodes[entry["Node"]["Node"]] = status
    if nodes != last:
        print(json.dumps({"t": t, "nodes": nodes}), flush=True)
        last = nodes
"""

# On each routing node: polls HAProxy's runtime API every 10 ms; one line {"t", "routed": [addresses]}
# whenever the set of usable servers of the backend changes (present, not in maintenance or drain).
WATCH_ROUTING = r"""
import json, socket, sys, time
path, backend, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
deadline = time.monotonic() + seconds
UNUSABLE = 0x01 | 0x02 | 0x04 | 0x08 | 0x20  # FMAINT IMAINT CMAINT FDRAIN RMAINT

def routed():
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(path)
        s.sendall(("show servers state %s\n" % backend).encode())
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    found = set()
    for line in b"".join(chunks).decode().splitlines():
        f = line.split()
        if len(f) > 6 and not line.startswith("#") and f[1] == backend:
            if int(f[6]) & UNUSABLE == 0 and f[5] != "0":
                found.add(f[4])
    return sorted(found)

last = None
while time.monotonic() < deadline:
    try:
        now = routed()
    except (OSError, ValueError):
        now = None  # HAProxy between workers: unknown, not empty
    t = time.time()
    if now is not None and now != last:
        print(json.dumps({"t": t, "routed": now}), flush=True)
        last = now
    time.sleep(0.01)
"""

# In a client that was just started: requests on fresh connections to 127.0.0.1:<port> every 10 ms
# until one is answered 200 by an app; one line with the wall-clock times of PID 1's start (from
# /proc/1/stat), of this probe's start, of HAProxy's first answer (any status) and of the first 200.
FIRST_ROUTED = r"""
import http.client, json, os, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
started = time.time()
with open("/proc/1/stat") as f:
    ticks = int(f.read().rsplit(")", 1)[1].split()[19])
pid1 = time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))
first_answer = first_ok = body = None
while time.time() - started < seconds:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/")
        response = conn.getresponse()
        text = response.read().decode(errors="replace").strip()
        conn.close()
        now = time.time()
        first_answer = first_answer or now
        if response.status == 200:
            first_ok, body = now, text
            break
    except (OSError, http.client.HTTPException):
        pass
    time.sleep(0.01)
print(json.dumps({"pid1": pid1, "probe": started, "answer": first_answer, "ok": first_ok, "body": body}))
"""

# Through a node's HAProxy: N requests on fresh connections; the answering hosts, one per line.
FETCH = r"""
import sys, urllib.request
for _ in range(int(sys.argv[2])):
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=3) as response:
            print(response.read().decode().strip().replace("hello from ", "", 1))
    except Exception as e:
        print("failed: %r" % (e,))
"""


# --- docker ---------------------------------------------------------------------------------------


def build_images() -> Dict[str, str]:
    """What `make image` does after `make zipapp` (which `make bench` has run): the base stand-in
    (its script returns at once when the tag exists), then the Dockerfile (layer cache on), so the
    image holds the very dist/basenode the other families measured; then the demo app on top, as
    docker-compose.yml builds it. Returns tag -> short image id."""
    made = subprocess.run(
        [str(ROOT / "scripts" / "build-base-image.sh"), "bookworm", BASE_IMAGE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    if made.returncode != 0:
        raise RuntimeError(f"scripts/build-base-image.sh failed:\n{(made.stdout + made.stderr)[-2000:]}")
    docker("build", "-q", "-t", IMAGE, str(ROOT), timeout=BUILD_TIMEOUT)
    docker("build", "-q", "-t", APP_IMAGE, str(ROOT / "examples" / "hello"), timeout=BUILD_TIMEOUT)
    return {tag: image_id(tag) for tag in (BASE_IMAGE, IMAGE, APP_IMAGE)}


def image_id(tag: str) -> str:
    return docker("image", "inspect", "-f", "{{.Id}}", tag).stdout.strip().split(":")[-1][:12]


def image_size(tag: str) -> int:
    return int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout.strip())


def layers(tag: str) -> List[Tuple[int, str]]:
    """(bytes, instruction) of each history entry, newest first, as `docker history` lists them."""
    out = docker(
        "history", "--human=false", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", tag
    ).stdout
    found = []
    for line in out.splitlines():
        size, _, created_by = line.partition("\t")
        found.append((int(size) if size.isdigit() else 0, created_by))
    return found


def free_subnet() -> ipaddress.IPv4Network:
    return ipaddress.ip_network(docker_helpers.free_subnet(SUBNETS))


class Cluster:
    """Our network and containers, found and removed by this run's label however the family ends.

    Addresses are pinned (`--ip`): a node reconnected after `docker network disconnect` must get its
    old address back (its agent is bound to it), and a node started later must never reuse the
    address of one that has just left, which other nodes may still list for a moment.
    """

    def __init__(self) -> None:
        self.run_id = uuid.uuid4().hex[:8]
        self.run_label = f"{LABEL}.run={self.run_id}"
        self.network = f"basenode-bench-{self.run_id}"
        self.subnet: Optional[ipaddress.IPv4Network] = None

    def __enter__(self) -> Cluster:
        self.subnet = free_subnet()
        docker("network", "create", *self._labels(), "--subnet", str(self.subnet), self.network)
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove_all()

    def _labels(self) -> List[str]:
        return ["--label", f"{LABEL}=1", "--label", self.run_label]

    def ip(self, host_number: int) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + host_number)

    def name(self, host: str) -> str:
        return f"basenode-bench-{self.run_id}-{host}"

    def create(self, host: str, image: str, env: Dict[str, str], host_number: int) -> str:
        """A container of node `host` (its hostname, its Consul node name), created, not started."""
        argv = ["create", *self._labels(), "--name", self.name(host), "--hostname", host]
        argv += ["--network", self.network, "--ip", self.ip(host_number), "--network-alias", host]
        for key, value in env.items():
            argv += ["-e", f"{key}={value}"]
        docker(*argv, image)
        return self.name(host)

    def remove(self, container: str, graceful: bool = True) -> None:
        """`docker stop` first when graceful: the agent leaves and the app deregisters and drains."""
        if graceful:
            docker("stop", "-t", "15", container, check=False, timeout=60)
        docker("rm", "-f", "-v", container, check=False)

    def remove_all(self) -> None:
        ids = docker("ps", "-aq", "--filter", f"label={self.run_label}", check=False).stdout.split()
        if ids:
            docker("rm", "-f", "-v", *ids, check=False, timeout=300)
        docker("network", "rm", self.network, check=False)


def node_env(**extra: str) -> Dict[str, str]:
    return {"CONSUL_JOIN": "server", "BASENODE_ROUTES": ROUTES, **extra}


# --- watchers: JSON lines from inside the containers ----------------------------------------------


@dataclass
class Watch:
    """A script inside a container (through `docker exec`, started by Processes), its lines as events."""

    log: Path
    events: List[dict] = field(default_factory=list)
    _offset: int = 0

    @classmethod
    def start(cls, procs: Processes, container: str, code: str, args: Sequence[str], log: Path) -> Watch:
        procs.start(["docker", "exec", container, "python3", "-c", code, *args], log=log)
        return cls(log)

    def poll(self) -> List[dict]:
        try:
            with open(self.log, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self.events
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            if line.startswith("{"):
                self.events.append(json.loads(line))
        return self.events

    def state(self, key: str) -> object:
        """The latest reported value (None before the first line)."""
        events = self.poll()
        return events[-1][key] if events else None

    def first(
        self, key: str, pred: Callable[[object], bool], after: float, timeout: float
    ) -> Optional[float]:
        """Wall-clock time of the first change at or after `after` whose value satisfies `pred`;
        None after `timeout` seconds of waiting."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.poll():
                if event["t"] >= after and pred(event[key]):
                    return event["t"]
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)


def wait_until(probe: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def fetch_hosts(container: str, count: int = 6) -> List[str]:
    out = docker(
        "exec", container, "python3", "-c", FETCH, f"http://127.0.0.1:{ROUTE_PORT}/", str(count), check=False
    ).stdout
    return out.split("\n")[:-1] if out else []


# --- figures --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    what: str
    values: Tuple[float, ...]
    target: Optional[float] = None
    missing: int = 0  # trials where the event did not happen within EVENT_TIMEOUT


def seconds_table(title: str, rows: Sequence[Row], notes: Sequence[str]) -> Table:
    body = []
    for row in rows:
        v = list(row.values)
        spread = f"{fmt(min(v), 2)} - {fmt(max(v), 2)}" if v else "-"
        n = f"{len(v)}" + (f" (+{row.missing} timed out)" if row.missing else "")
        target = f"< {row.target:g}" if row.target else ""
        vs = ratio(median(v), row.target) if row.target and v else ""
        body.append((row.what, n, fmt(median(v), 2) if v else "-", spread, target, vs))
    headers = ("interval", "n", "median s", "range s", "target s", "median / target")
    return Table(title, headers, tuple(body), tuple(notes))


def image_phase(ids: Dict[str, str]) -> Tuple[Table, Dict[str, float]]:
    base, final = image_size(BASE_IMAGE), image_size(IMAGE)
    mb = {"base": base / 1e6, "final": final / 1e6}
    # The final image's history ends with the base's: what comes before is what the Dockerfile added.
    final_layers, base_count = layers(IMAGE), len(layers(BASE_IMAGE))
    added = final_layers[: len(final_layers) - base_count]
    rows = [
        (f"`{BASE_IMAGE}` (base; local debootstrap stand-in, {ids[BASE_IMAGE]})", fmt(mb["base"]), "-"),
        (f"`{IMAGE}` (final, {ids[IMAGE]})", fmt(mb["final"]), ratio(mb["final"], SEED_BASE_MB)),
    ]
    for size, created in added:
        if size > 0:
            rows.append((f"  layer: {describe_layer(created)}", fmt(size / 1e6), ""))
    rows.append(
        (
            "phusion/baseimage 0.9.x (the seed's base, documented, not measured)",
            f"~{SEED_BASE_MB:.0f}",
            "1.00x",
        )
    )
    notes = (
        "Size is `docker image inspect` .Size (all layers, uncompressed) in MB of 10^6 bytes, as "
        "`docker images` shows it; layers from `docker history` (they sum to final minus base).",
        f"The base is not pulled: there is no registry here, so `make image` tags a Debian bookworm minbase "
        f"rootfs (debootstrap, slimmed as Debian's -slim images are) as `{BASE_IMAGE}`; the real image is "
        "about the same size.",
        "The seed's phusion/baseimage figure (about 300 MB before the seed added anything) is the one "
        "issue 4 states; the seed then added Consul, HAProxy, pyconfd and Python packages on top of it.",
    )
    table = Table("Image size", ("image", "MB", f"vs seed base ({SEED_BASE_MB:.0f} MB)"), tuple(rows), notes)
    return table, mb


def describe_layer(created_by: str) -> str:
    text = re.sub(r"^/bin/sh -c (#\(nop\) )?", "", created_by).strip()
    if "apt-get install" in text:
        return "RUN apt-get install haproxy python3"
    if "basenode version" in text:
        return "RUN basenode version (shiv unpacks the zipapp's packages once)"
    if text.startswith("COPY") or text.startswith("ADD"):
        text = re.sub(r"\S+:[0-9a-f]{20,}", "", text)
        return re.sub(r"\s+", " ", text).strip()
    return text[:60]


STAGES = (
    ("PID 1 (basenode run) started", "pid1"),
    ("consul agent spawned", "consul"),
    ("sync spawned (agent up: 1 s startsecs)", "sync"),
    ("first HAProxy config rendered", "rendered"),
    ("HAProxy spawned (sync up: 1 s startsecs)", "haproxy"),
    ("HAProxy answers on 127.0.0.1:9302 (any status)", "answer"),
    ("**first request routed (200 from an app)**", "ok"),
)
LOG_STAGES = (
    ("consul", re.compile(r"supervise \w+: consul: started pid")),
    ("sync", re.compile(r"supervise \w+: sync: started pid")),
    ("rendered", re.compile(r"applied by \w+ in")),
    ("haproxy", re.compile(r"supervise \w+: haproxy: started pid")),
)


APP_LOG_STAGES = (
    ("consul", LOG_STAGES[0][1]),
    ("haproxy", LOG_STAGES[3][1]),
    ("app", re.compile(r"supervise \w+: app: started pid")),
    ("register", re.compile(r"registered hello \(id")),
)


def log_times(container: str, stages: Sequence[Tuple[str, re.Pattern]] = LOG_STAGES) -> Dict[str, float]:
    """Wall-clock times of basenode's own log lines, stamped by the Docker daemon as they arrive."""
    result = docker("logs", "-t", container, check=False)
    found: Dict[str, float] = {}
    for line in (result.stdout + result.stderr).splitlines():
        stamp, _, text = line.partition(" ")
        for key, pattern in stages:
            if key not in found and pattern.search(text):
                found[key] = stamp_seconds(stamp)
    return found


def start_phase(cluster: Cluster, reps: int) -> Tuple[Table, List[float]]:
    """Figure 2: `docker start` of a client node -> first request routed through its own HAProxy."""
    samples: Dict[str, List[float]] = {key: [] for _, key in STAGES}
    samples["started"] = []
    missing = 0
    for i in range(reps):
        host = f"client{i + 2}"
        container = cluster.create(host, IMAGE, node_env(), 20 + i)
        try:
            t0 = time.time()
            docker("start", container)
            samples["started"].append(time.time() - t0)
            # The probe starts a few tens of ms after `docker start` returns, well before HAProxy
            # listens (about 2 s later): the times it reports are not delayed by its own start.
            out = docker(
                "exec",
                container,
                "python3",
                "-c",
                FIRST_ROUTED,
                str(ROUTE_PORT),
                str(EVENT_TIMEOUT),
                check=False,
            ).stdout.strip()
            probe = json.loads(out.splitlines()[-1]) if out else {"ok": None}
            if probe["ok"] is None:
                missing += 1
                continue
            times = {**log_times(container), **{k: probe[k] for k in ("pid1", "answer", "ok")}}
            for _, key in STAGES:
                if key in times and times[key] is not None:
                    samples[key].append(times[key] - t0)
        finally:
            cluster.remove(container)
    rows = [Row("`docker start` returned", tuple(samples["started"]))]
    for what, key in STAGES:
        target = START_TARGET if key == "ok" else None
        rows.append(Row(what, tuple(samples[key]), target, missing if key == "ok" else 0))
    notes = (
        "Each row: seconds from the host calling `docker start` on a created client container (image "
        f"`{IMAGE}`, `CONSUL_JOIN=server`, `BASENODE_ROUTES={ROUTES}`; a new node joining the running "
        "cluster of 1 server + 2 app nodes + 1 client) until the event.",
        "PID 1's start is read from /proc/1/stat; the consul, sync, render and HAProxy rows are the Docker "
        "daemon's timestamps of basenode's log lines (`docker logs -t`); the last two rows come from a probe "
        "`docker exec`'d right after `docker start` returned, which sends a request on a fresh connection "
        "to 127.0.0.1:9302 every 10 ms (so they are late by up to ~10 ms).",
        "Each client is stopped (`docker stop`, its agent leaves) and removed before the next one starts.",
    )
    return seconds_table(
        "Container start -> first request routed through its own HAProxy", rows, notes
    ), samples["ok"]


def new_instance_phase(
    cluster: Cluster, catalog: Watch, routing: Dict[str, Watch], reps: int
) -> Tuple[Table, List[float]]:
    """Figure 3: a new app node -> its check passing in the catalog -> routed on every other node."""
    registered, passing, start_to_routed, pass_to_all = [], [], [], []
    per_node: Dict[str, List[float]] = {host: [] for host in routing}
    stages: Dict[str, List[float]] = {key: [] for key, _ in APP_LOG_STAGES}
    missing = 0
    for i in range(reps):
        host = f"new{i + 1}"
        address = cluster.ip(40 + i)
        container = cluster.create(host, APP_IMAGE, node_env(), 40 + i)
        try:
            steady(catalog, routing, cluster)
            t0 = time.time()
            docker("start", container)
            seen = catalog.first("nodes", lambda nodes, h=host: h in nodes, t0, EVENT_TIMEOUT)
            ok = catalog.first("nodes", lambda nodes, h=host: nodes.get(h) == "passing", t0, EVENT_TIMEOUT)
            routed = {
                node: watch.first("routed", lambda r, a=address: a in r, t0, EVENT_TIMEOUT)
                for node, watch in routing.items()
            }
            if seen is None or ok is None or None in routed.values():
                missing += 1
                continue
            hosts = fetch_hosts(cluster.name("client"), 8)
            if host not in hosts:  # the figure counts only if requests really reach the new node
                raise RuntimeError(f"{host} routed in HAProxy but no request reached it: {hosts}")
            for key, t in log_times(container, APP_LOG_STAGES).items():
                stages[key].append(t - t0)
            registered.append(seen - t0)
            passing.append(ok - t0)
            for node, t in routed.items():
                per_node[node].append(t - ok)
            pass_to_all.append(max(routed.values()) - ok)
            start_to_routed.append(max(routed.values()) - t0)
        finally:
            cluster.remove(container)
    rows = [
        Row("`docker start` -> consul agent spawned", tuple(stages["consul"])),
        Row("`docker start` -> HAProxy spawned (agent up 1 s, sync up 1 s)", tuple(stages["haproxy"])),
        Row("`docker start` -> app spawned (HAProxy up: 1 s startsecs)", tuple(stages["app"])),
        Row("`docker start` -> basenode registered the service with its agent", tuple(stages["register"])),
        Row("`docker start` -> registered in the catalog (check not yet passing)", tuple(registered)),
        Row("`docker start` -> health check passing in the catalog", tuple(passing)),
        *(Row(f"check passing -> routed on {node}", tuple(v)) for node, v in per_node.items()),
        Row("**check passing -> routed on every other node**", tuple(pass_to_all), ROUTE_TARGET, missing),
        Row("`docker start` -> routed on every other node", tuple(start_to_routed), None, missing),
    ]
    notes = (
        f"A new `{APP_IMAGE}` node (examples/hello: `SERVICE_NAME=hello`, HTTP check `/health` every 1 s) "
        "joins the running cluster; every other node (the client and both app nodes) routes `hello`.",
        "Catalog times: a blocking query on `/v1/health/service/hello` against the server's agent, inside "
        "the server container (it returns within milliseconds of a change). Passing means every check of the "
        "instance passing, node checks included, which is what `?passing` (and so basenode) routes.",
        "Routed: the node's HAProxy lists the new address as a usable server (runtime API `show servers "
        "state`, polled every 10 ms inside that node), i.e. its next requests can go there; after each trial "
        "8 requests from the client must include an answer from the new node.",
        "`docker start` -> passing includes the agent's start, its join, basenode's registration once the "
        "app answers, and Consul's first check, run after a random stagger of up to one interval (1 s).",
        "The spawn and registration rows are the Docker daemon's timestamps of the new node's log lines; "
        "the app starts only once the agent and HAProxy are up (basenode's `depends_on` + `startsecs`).",
        "Each new node is stopped gracefully (deregistered, drained, left) and removed before the next.",
    )
    return seconds_table("New app container -> routed on every other node", rows, notes), pass_to_all


def failure_phase(
    cluster: Cluster, catalog: Watch, routing: Dict[str, Watch], victim: str, reps: int
) -> Tuple[Table, Dict[str, List[float]]]:
    """Figure 4: `docker network disconnect` an app node -> dropped everywhere; reconnect -> routed again."""
    address = cluster.ip(HOSTS[victim])
    others = {node: watch for node, watch in routing.items() if node != victim}
    fig: Dict[str, List[float]] = {k: [] for k in ("critical", "dropped", "crit_to_drop", "passing", "back")}
    missing_drop = missing_back = 0
    container = cluster.name(victim)
    for _ in range(reps):
        steady(catalog, routing, cluster)
        t0 = time.time()
        docker("network", "disconnect", cluster.network, container)
        try:
            crit = catalog.first("nodes", lambda n: n.get(victim) not in (None, "passing"), t0, EVENT_TIMEOUT)
            dropped = [
                w.first("routed", lambda r: address not in r, t0, EVENT_TIMEOUT) for w in others.values()
            ]
        finally:
            t1 = time.time()
            docker("network", "connect", "--ip", address, cluster.network, container)
        if crit is None or None in dropped:
            missing_drop += 1
        else:
            fig["critical"].append(crit - t0)
            fig["dropped"].append(max(dropped) - t0)
            fig["crit_to_drop"].append(max(dropped) - crit)
        ok = catalog.first("nodes", lambda n: n.get(victim) == "passing", t1, EVENT_TIMEOUT)
        back = [w.first("routed", lambda r: address in r, t1, EVENT_TIMEOUT) for w in others.values()]
        if ok is None or None in back:
            missing_back += 1
            continue
        fig["passing"].append(ok - t1)
        fig["back"].append(max(back) - t1)
    names = " and ".join(others)
    rows = [
        Row("disconnect -> instance critical in the catalog (failure detected)", tuple(fig["critical"])),
        Row(f"critical -> dropped on every other node ({names})", tuple(fig["crit_to_drop"])),
        Row("**disconnect -> dropped on every other node**", tuple(fig["dropped"]), None, missing_drop),
        Row("reconnect -> instance passing again in the catalog", tuple(fig["passing"])),
        Row("**reconnect -> routed again on every other node**", tuple(fig["back"]), None, missing_back),
    ]
    notes = (
        f"`docker network disconnect` of app node `{victim}` (its processes keep running, cut off), then "
        f"`docker network connect --ip` with its old address once it has been dropped everywhere.",
        "Nothing tells Consul the node is gone: its gossip failure detector (Serf, LAN defaults: 1 s probe "
        "interval, suspicion before a node is declared failed) marks it, its `serfHealth` check turns "
        "critical, and basenode drops the instance on the next change of the catalog.",
        "Times are from the host's disconnect/connect call to the first change seen by the same in-container "
        "watchers as above (catalog: blocking query on the server; routing: `show servers state`, 10 ms).",
    )
    return seconds_table("Time to drop a disconnected node, and to route it again", rows, notes), fig


# Host numbers in the subnet: the address of each node (see Cluster).
HOSTS = {"server": 2, "app1": 11, "app2": 12, "client": 13}
ROUTING_NODES = ("client", "app1", "app2")


def expected_routed(cluster: Cluster) -> List[str]:
    return sorted(cluster.ip(HOSTS[h]) for h in ("app1", "app2"))


def steady(catalog: Watch, routing: Dict[str, Watch], cluster: Cluster, timeout: float = 60.0) -> None:
    """Start each trial from the same state: both apps passing and routed, only them, on every node."""
    want = expected_routed(cluster)
    wait_until(
        lambda: (
            catalog.state("nodes") == {"app1": "passing", "app2": "passing"}
            and all(w.state("routed") == want for w in routing.values())
        ),
        timeout,
        "the cluster to be steady (app1 and app2 passing and routed on every node, nothing else)",
    )


def start_cluster(cluster: Cluster) -> None:
    server_env = {"CONSUL_SERVER": "1", "CONSUL_BOOTSTRAP_EXPECT": "1"}
    docker("start", cluster.create("server", IMAGE, server_env, HOSTS["server"]))
    for host in ("app1", "app2"):
        docker("start", cluster.create(host, APP_IMAGE, node_env(), HOSTS[host]))
    docker("start", cluster.create("client", IMAGE, node_env(), HOSTS["client"]))


def run(ctx: Context) -> Section:
    if docker("version", "--format", "{{.Server.Version}}", check=False).returncode != 0:
        raise RuntimeError("the Docker engine does not answer (`docker version`)")
    t = time.monotonic()
    ids = build_images()
    print(f"(images: {time.monotonic() - t:.0f} s)", flush=True)
    image_table, mb = image_phase(ids)
    reps = ctx.reps(7, 1)
    watch_for = str(1800.0)  # the watchers end with their containers, or after this many seconds
    with Cluster() as cluster, Processes() as procs:  # the watchers stop first
        t = time.monotonic()
        start_cluster(cluster)
        logs = ctx.scratch / "docker"
        logs.mkdir(parents=True, exist_ok=True)
        catalog = Watch.start(
            procs, cluster.name("server"), WATCH_CATALOG, (SERVICE, watch_for), logs / "cat"
        )
        routing: Dict[str, Watch] = {}
        for host in ROUTING_NODES:
            wait_until(
                lambda h=host: (
                    docker("exec", cluster.name(h), "test", "-S", STATS_SOCKET, check=False).returncode == 0
                ),
                60,
                f"HAProxy's runtime socket on {host}",
            )
            args = (STATS_SOCKET, SERVICE, watch_for)
            routing[host] = Watch.start(procs, cluster.name(host), WATCH_ROUTING, args, logs / host)
        steady(catalog, routing, cluster, timeout=90)
        print(f"(cluster up: {time.monotonic() - t:.0f} s)", flush=True)
        t = time.monotonic()
        start_table, start_ok = start_phase(cluster, reps)
        print(f"(start: {time.monotonic() - t:.0f} s)", flush=True)
        t = time.monotonic()
        new_table, pass_to_all = new_instance_phase(cluster, catalog, routing, reps)
        print(f"(new instance: {time.monotonic() - t:.0f} s)", flush=True)
        t = time.monotonic()
        fail_table, fail = failure_phase(cluster, catalog, routing, "app2", reps)
        print(f"(failure: {time.monotonic() - t:.0f} s)", flush=True)
    summary = (
        target_line("container start -> first request routed through its HAProxy", start_ok, START_TARGET),
        target_line("new instance: check passing -> routed on every other node", pass_to_all, ROUTE_TARGET),
        f"image: `{IMAGE}` is {mb['final']:.0f} MB on a {mb['base']:.0f} MB base, "
        f"{ratio(mb['final'], SEED_BASE_MB)} of the seed's ~{SEED_BASE_MB:.0f} MB phusion base alone "
        "(documented figure, not measured)",
        "disconnected node dropped on every other node in "
        + (
            f"{median(fail['dropped']):.1f} s (median); "
            f"routed again {median(fail['back']):.1f} s after reconnect"
            if fail["dropped"] and fail["back"]
            else "- (timed out)"
        ),
    )
    method = (
        "One run on this machine's Docker engine. The images are built first as `make image` builds "
        "them (the project's Dockerfile, with the measured dist/basenode, on the local base) and "
        "`docker build examples/hello`; the cluster is "
        "docker-compose.yml's "
        f"(1 Consul server, 2 `hello` app nodes, 1 client, route `{ROUTES}` on every node) started with "
        "`docker create/start` on a network of our own with pinned addresses. Times are wall-clock readings "
        "from the host and from scripts inside the containers, which share the host's clock. Small n: "
        "each table gives the median and the range of n trials.",
    )
    if ctx.zipapp.resolve() != (ROOT / "dist" / "basenode").resolve():
        method += (f"Note: the image holds dist/basenode (the Dockerfile copies it), not `{ctx.zipapp}`.",)
    return Section(TITLE, (image_table, start_table, new_table, fail_table), method, summary)


def target_line(what: str, values: Sequence[float], target: float) -> str:
    if not values:
        return f"{what}: not measured (every trial timed out)"
    under = sum(1 for v in values if v < target)
    met = (
        "met"
        if under == len(values)
        else (
            f"{'met' if median(values) < target else 'MISSED'} at the median, "
            f"{len(values) - under} of {len(values)} trials over"
        )
    )
    return (
        f"{what}: {median(values):.2f} s median (range {min(values):.2f} - {max(values):.2f}, "
        f"n={len(values)}); target < {target:g} s: {met}"
    )
