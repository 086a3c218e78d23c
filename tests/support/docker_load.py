"""Steady load from inside a cluster's client container, and what a stopped node's log says about
its drain: shared by tests/docker/test_cluster.py and bench/docker_drain.py."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
from typing import Any, Dict, Tuple

DRAIN_LINE = re.compile(
    r"drain ended after ([0-9.]+) s: (quiet|open connections finished|upper bound reached)"
)

# Runs inside the client container: requests on fresh connections every 10 ms until its stdin
# closes (bounded by a request count and a deadline too), then one JSON line with the answers:
# {"ok": {host: count}, "failed": [repr, ...]}. "started" once the first request was answered.
CLIENT_LOAD = r"""
import json, sys, threading, time, urllib.request
url, limit, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
ok, failed, started = {}, [], False
deadline = time.monotonic() + seconds
for _ in range(limit):
    if done.is_set() or time.monotonic() > deadline:
        break
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            host = response.read().decode().strip().replace("hello from ", "", 1)
        ok[host] = ok.get(host, 0) + 1
        if not started:
            started = True
            print("started", flush=True)
    except Exception as e:
        failed.append(repr(e))
    time.sleep(0.01)
print(json.dumps({"ok": ok, "failed": failed}), flush=True)
"""


class ClientLoad:
    """CLIENT_LOAD in container `client` against `url` (`docker exec -i`), from its first answer on.

    `finish()` closes its stdin and returns (the JSON answer, its stderr); leaving the `with` block
    kills it if it is still running."""

    def __init__(self, client: str, url: str, limit: int = 20000, seconds: float = 90.0) -> None:
        self.proc = subprocess.Popen(
            ["docker", "exec", "-i", client, "python3", "-c", CLIENT_LOAD, url, str(limit), str(seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def __enter__(self) -> ClientLoad:
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "started"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def finish(self, timeout: float = 120.0) -> Tuple[Dict[str, Any], str]:
        out, err = self.proc.communicate(input="", timeout=timeout)
        return json.loads(out.strip().splitlines()[-1]), err


def stamp_seconds(stamp: str) -> float:
    """`docker logs -t`'s RFC 3339 stamp (nanoseconds) -> epoch seconds; the host shares the clock."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    t = datetime.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return t.timestamp() + float("0." + (fraction or "0"))
