"""docker-basenode's way of following the catalog, for the benchmarks to measure basenode against.

docker-basenode ran pyconfd under supervisord: every 5 s pyconfd read the catalog from the local
Consul agent, rendered HAProxy's config from a Jinja2 template and, when the text had changed, had
HAProxy restarted. This process does the same with basenode's own pieces, so that only the way of
following the catalog differs: every INTERVAL seconds it reads the routes' healthy instances
(basenode's one-shot read: the `basenode/routes/` KV prefix, then each route's health, one request
each), renders basenode's HAProxy template, and when the text changed checks it with `haproxy -c`,
stops HAProxy (SIGTERM to the master: open sessions are cut) and starts it again from the new file.
No blocking query, no runtime API, no seamless reload.

    CONSUL_HTTP_ADDR=127.0.0.1:8500 python bench/poll_and_restart.py \
        --state-dir DIR --routes web:9302/http [--interval 5]

Each restart is logged as `haproxy: applied by restart in X ms` (from the render to the new worker
answering), the line basenode logs for its own applies, so the benchmarks count both alike.
SIGTERM stops HAProxy and then this process.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: basenode from this checkout
    sys.path.insert(0, str(ROOT))

from basenode import config  # noqa: E402
from basenode.dependency import READ_ERRORS  # noqa: E402
from basenode.output import haproxy  # noqa: E402
from basenode.routes import ConsulUnavailable, fetch_snapshot  # noqa: E402
from basenode.template import render  # noqa: E402

log = logging.getLogger("poll_and_restart")

INTERVAL = 5.0  # pyconfd's: docker-basenode's README, "updated every 5 seconds"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class Stopped(Exception):
    """SIGTERM or SIGINT arrived."""


def settings_for(state_dir: Path, routes: str, haproxy_bin: Optional[str]) -> config.Settings:
    """basenode's settings for these routes, from no config file; the agent from CONSUL_HTTP_ADDR.
    No access log: one line per request under load would be measured as this subject's cost."""
    flags = config.Flags(
        state_dir=str(state_dir), routes=routes, no_consul=True, haproxy_bin=haproxy_bin, haproxy_log="off"
    )
    return config.load(flags, {**os.environ, "BASENODE_CONFIG": os.devnull})


class HAProxy:
    """HAProxy in master-worker mode, started from the live file and stopped the hard way."""

    def __init__(self, settings: config.Settings) -> None:
        self.settings = settings
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        self.proc = subprocess.Popen(haproxy.program(self.settings).command, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._serving():
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode} at start")
            if time.monotonic() > deadline:
                raise RuntimeError(f"haproxy not serving {START_TIMEOUT:.0f}s after its start")
            time.sleep(0.01)

    def _serving(self) -> bool:
        """The master answers and its worker is the one the stats socket speaks for."""
        try:
            workers = haproxy.show_proc(self.settings.haproxy_master_socket, timeout=1.0).workers
            return bool(workers) and haproxy.stats_pid(self.settings.haproxy_stats_socket) in workers
        except (haproxy.RuntimeAPIError, OSError, KeyError, ValueError):
            return False

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: the master stops its workers at once, sessions cut
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def apply(settings: config.Settings, text: str, proxy: HAProxy) -> None:
    """Check `text`, put it in place, restart HAProxy on it. CheckFailed leaves everything as it was."""
    live = settings.haproxy_cfg
    candidate = live.with_name(live.name + ".new")
    candidate.write_text(text)
    os.chmod(candidate, 0o600)
    haproxy.check(settings.haproxy_bin, candidate)
    os.replace(candidate, live)
    proxy.stop()
    proxy.start()


def run(settings: config.Settings, interval: float) -> None:
    template = render.load_template(settings.template or render.default_template(), single_line=True)
    proxy = HAProxy(settings)
    live: Optional[str] = None
    try:
        while True:
            started = time.monotonic()
            try:
                text = render.render(template, fetch_snapshot(settings), settings)
            except (ConsulUnavailable, *READ_ERRORS) as e:
                log.warning("consul: %s", e)
                text = live
            if text is not None and text != live:
                try:
                    apply(settings, text, proxy)
                except haproxy.CheckFailed as e:
                    log.error("haproxy: the new config failed its check, the old one keeps running: %s", e)
                else:
                    took = (time.monotonic() - started) * 1000
                    # only a restart is an apply: the first start is not a change the benchmarks made
                    log.info("haproxy: %s in %.1f ms", "applied by restart" if live else "started", took)
                    live = text
            elif proxy.exited():
                log.warning("haproxy: exited by itself, starting it again")  # as supervisord did
                proxy.start()
            time.sleep(interval)  # between rounds, as pyconfd's loop slept
    finally:
        proxy.stop()


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True, help="rendered config and HAProxy's sockets")
    parser.add_argument("--routes", required=True, help="basenode's route spec, e.g. web:9302/http")
    parser.add_argument(
        "--interval", type=float, default=INTERVAL, help=f"seconds between reads ({INTERVAL:g})"
    )
    parser.add_argument("--haproxy-bin", help="HAProxy binary (default: from PATH)")
    return parser.parse_args(argv)


def _stop(signum: int, frame: object) -> None:
    raise Stopped()


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    args.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        run(settings_for(args.state_dir, args.routes, args.haproxy_bin), args.interval)
    except Stopped:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
