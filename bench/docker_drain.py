"""Docker figure of issue 16: `docker stop` of an application node, adaptive drain vs a fixed 2 s.

The cluster of bench/docker_cluster.py (one Consul server, two `hello` app nodes, one client, all
routing `hello:9302/http`, the project's image on a network of our own). app1 is stopped under
steady load from the client (requests on fresh connections through the client's own HAProxy),
started again once stopped, and stopped again, `reps` times per drain mode:

- adaptive: the defaults (`drain` 2 s as the upper bound, `drain_quiet` 0.5 s);
- fixed 2 s: `drain_quiet` 2 s, so that the drain always runs to its bound, as before issue 16;
- the same two with a 10 s bound.

Per stop: the host's `docker stop` call until it returned (the container has exited), app1's
exit status, the drain's length and reason from app1's log, the agent's graceful leave (from the
drain's start to "the agent left the cluster"), and the client's failed requests during it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Dict, List, Tuple

from bench import docker_cluster as dc
from bench.common import Context, Processes, Section, Table, fmt, median, percentile, ratio
from tests.support.docker_load import DRAIN_LINE, ClientLoad, stamp_seconds

TITLE = "Docker cluster: the drain on stop (issue 16)"

# (name, app1's environment, share of the stops): the two the issue asks for, then the same with a
# 10 s bound (half as many stops), which is what a longer safety margin costs in each.
MODES = (
    ("adaptive, drain 2 s at most (defaults: drain_quiet 0.5 s)", {}, 1.0),
    ("fixed 2 s (drain_quiet = drain = 2 s)", {"BASENODE_DRAIN_QUIET": "2"}, 1.0),
    ("adaptive, drain 10 s at most", {"BASENODE_DRAIN": "10"}, 0.5),
    ("fixed 10 s", {"BASENODE_DRAIN": "10", "BASENODE_DRAIN_QUIET": "10"}, 0.5),
)
STOP_TIMEOUT = 20  # docker stop -t: far above any drain here; a stop that needs it shows as status 137

DRAIN_START = re.compile(r"register info: draining: ports")
LEFT = re.compile(r"register info: the agent left the cluster")


@dataclass(frozen=True)
class Stop:
    stop_s: float  # docker stop called -> returned (exited)
    status: str  # app1's exit code
    drain_s: float
    reason: str
    leave_s: float  # drain start -> the agent left the cluster
    requests: int
    failed: int


def one_stop(cluster: dc.Cluster, container: str) -> Stop:
    url = f"http://127.0.0.1:{dc.ROUTE_PORT}/"
    with ClientLoad(cluster.name("client"), url) as load:
        time.sleep(1.0)  # steady load before the stop
        t0 = time.monotonic()
        dc.docker("stop", "-t", str(STOP_TIMEOUT), container, timeout=STOP_TIMEOUT + 30)
        stop_s = time.monotonic() - t0
        time.sleep(0.5)  # and after it: requests sent to a stopped node would fail now
        result, _ = load.finish(timeout=60)
    status = dc.docker("inspect", "-f", "{{.State.ExitCode}}", container).stdout.strip()
    # The container's log holds its earlier runs too: the last of each line is this stop's.
    logs = dc.docker("logs", "-t", container, check=False)
    drain, started, left = None, None, None
    for line in (logs.stdout + logs.stderr).splitlines():
        stamp, _, text = line.partition(" ")
        if DRAIN_START.search(text):
            started, drain, left = stamp_seconds(stamp), None, None
        elif LEFT.search(text):
            left = stamp_seconds(stamp)
        found = DRAIN_LINE.search(text)
        if found:
            drain = found
    if drain is None or started is None:
        raise RuntimeError(f"no drain in app1's log:\n{(logs.stdout + logs.stderr)[-2000:]}")
    leave = (left - started) if left is not None else float("nan")
    failed = len(result["failed"])
    requests = sum(result["ok"].values()) + failed
    return Stop(stop_s, status, float(drain.group(1)), drain.group(2), leave, requests, failed)


def mode_trials(
    cluster: dc.Cluster, routing: Dict[str, dc.Watch], catalog: dc.Watch, env: Dict[str, str], reps: int
) -> List[Stop]:
    """app1 created with `env`, then started and stopped `reps` times under load."""
    container = cluster.name("app1")
    cluster.remove(container)  # the app1 of the previous mode (or of start_cluster), stopped gracefully
    cluster.create("app1", dc.APP_IMAGE, dc.node_env(**env), dc.HOSTS["app1"])
    stops = []
    for _ in range(reps):
        dc.docker("start", container)
        dc.steady(catalog, routing, cluster)
        stops.append(one_stop(cluster, container))
    return stops


def run(ctx: Context) -> Section:
    if dc.docker("version", "--format", "{{.Server.Version}}", check=False).returncode != 0:
        raise RuntimeError("the Docker engine does not answer (`docker version`)")
    t = time.monotonic()
    ids = dc.build_images()
    print(f"(images: {time.monotonic() - t:.0f} s)", flush=True)
    reps = ctx.reps(10, 2)
    results: List[Tuple[str, List[Stop]]] = []
    with dc.Cluster() as cluster, Processes() as procs:
        dc.start_cluster(cluster)
        logs = ctx.scratch / "docker-drain"
        logs.mkdir(parents=True, exist_ok=True)
        watch_for = "1800"
        catalog = dc.Watch.start(
            procs, cluster.name("server"), dc.WATCH_CATALOG, (dc.SERVICE, watch_for), logs / "cat"
        )
        routing: Dict[str, dc.Watch] = {}
        for host in ("client", "app2"):
            dc.wait_until(
                lambda h=host: (
                    dc.docker("exec", cluster.name(h), "test", "-S", dc.STATS_SOCKET, check=False).returncode
                    == 0
                ),
                60,
                f"HAProxy's runtime socket on {host}",
            )
            args = (dc.STATS_SOCKET, dc.SERVICE, watch_for)
            routing[host] = dc.Watch.start(procs, cluster.name(host), dc.WATCH_ROUTING, args, logs / host)
        dc.steady(catalog, routing, cluster, timeout=90)
        for name, env, share in MODES:
            t = time.monotonic()
            results.append((name, mode_trials(cluster, routing, catalog, env, max(1, round(reps * share)))))
            print(f"({name}: {time.monotonic() - t:.0f} s)", flush=True)
    return section(results, ids, reps)


def section(results: List[Tuple[str, List[Stop]]], ids: Dict[str, str], reps: int) -> Section:
    base = median([s.stop_s for s in results[0][1]])
    rows = []
    for name, stops in results:
        stop = [s.stop_s for s in stops]
        drain = [s.drain_s for s in stops]
        leave = [s.leave_s for s in stops if s.leave_s == s.leave_s]
        reasons = ", ".join(
            f"{r} {sum(1 for s in stops if s.reason == r)}" for r in sorted({s.reason for s in stops})
        )
        rows.append(
            (
                name,
                str(len(stops)),
                fmt(median(stop), 2),
                fmt(percentile(stop, 99), 2),
                fmt(median(drain), 2),
                fmt(percentile(drain, 99), 2),
                reasons,
                fmt(median(leave), 2) if leave else "-",
                f"{sum(s.failed for s in stops)} of {sum(s.requests for s in stops):,}",
                ",".join(sorted({s.status for s in stops})),
                ratio(median(stop), base),
            )
        )
    headers = (
        "drain",
        "stops",
        "stop p50 s",
        "stop p99 s",
        "drain p50 s",
        "drain p99 s",
        "drain ended",
        "agent leave p50 s",
        "failed requests",
        "exit status",
        "stop p50 vs adaptive",
    )
    notes = (
        "stop: the host's `docker stop -t 20` call until it returned, i.e. until app1 had exited; "
        "drain: from app1's log (`drain ended after ... s: reason`); agent leave: app1's log, from the "
        "drain's start to `the agent left the cluster` (Consul's graceful leave, started at the same "
        "moment as the drain, runs beside it).",
        f"n = {reps} stops for each 2 s mode, half as many for the 10 s ones (small numbers: p99 is "
        "about the slowest stop). "
        "Before each stop app1 is started again and the next stop waits until both apps pass in the "
        "catalog and are routed on the client and app2 (runtime API, polled every 10 ms).",
        "The client sends requests on fresh connections through its own HAProxy every 10 ms, from 1 s "
        "before the stop until 0.5 s after it; failed requests are those that got no 200 answer.",
        "The stop waits for the longer of the drain and the agent's graceful leave (basenode waits up "
        "to 3 s past the drain for the leave to finish, so that the node shows as left, not failed): "
        "with the agent in the container, a drain shorter than the leave does not shorten the stop.",
    )
    table = Table("`docker stop` of an app node under load -> exited", headers, tuple(rows), notes)
    adaptive, fixed = results[0][1], results[1][1]

    def p50_p99(values: List[float]) -> str:
        return f"{fmt(median(values), 2)} s ({fmt(percentile(values, 99), 2)} s)"

    summary = (
        f"docker stop -> exited, p50 (p99): adaptive {p50_p99([s.stop_s for s in adaptive])}, fixed 2 s "
        f"{p50_p99([s.stop_s for s in fixed])}; the drain itself: adaptive "
        f"{p50_p99([s.drain_s for s in adaptive])}, "
        f"fixed {p50_p99([s.drain_s for s in fixed])}; failed requests: "
        f"{sum(s.failed for s in adaptive)} and {sum(s.failed for s in fixed)}",
    )
    method = (
        "One run on this machine's Docker engine, the cluster of the Docker cluster section (images "
        f"`{dc.IMAGE}` {ids.get(dc.IMAGE, '?')} and `{dc.APP_IMAGE}` {ids.get(dc.APP_IMAGE, '?')}, built "
        "from the measured dist/basenode). app1 is created once per mode with that mode's environment, "
        "then started and stopped repeatedly; the modes run one after the other.",
    )
    return Section(TITLE, (table,), method, summary)
