"""Self-registration: the service is in Consul while the app runs, and gone before the app is stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ZIPAPP
from tests.support.backends import Backends
from tests.support.consul_agent import ConsulAgent
from tests.support.waiting import eventually

# The app: serves nothing itself (a real backend stands in for it on SERVICE_PORT); on SIGTERM it
# records what the local agent has registered at that moment, then exits.
APP = r"""
import json, signal, sys, time, urllib.request
def on_term(*_):
    with urllib.request.urlopen(sys.argv[1] + "/v1/agent/services", timeout=5) as r:
        services = json.load(r)
    with open(sys.argv[2], "w") as f:
        json.dump({"at": time.time(), "services": sorted(services)}, f)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
while True:
    time.sleep(1)
"""


def test_the_app_is_registered_while_it_runs_and_deregistered_a_drain_before_it_stops(
    zipapp, tmp_path: Path, consul_agent: ConsulAgent
):
    backends = Backends()
    backend = backends.start("app")
    seen = tmp_path / "seen-at-sigterm.json"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BASENODE_", "CONSUL_", "SERVICE_"))},
        "BASENODE_CONFIG": os.devnull,
        "CONSUL_HTTP_ADDR": consul_agent.http_addr,
        "SERVICE_NAME": "shop",
        "SERVICE_PORT": str(backend.port),
        "SERVICE_TAGS": "v1,blue",
        "SERVICE_CHECK_HTTP": "/health",
        "SERVICE_CHECK_INTERVAL": "1s",
    }
    argv = [sys.executable, str(ZIPAPP), "run", "--no-consul", "--no-haproxy", "--drain", "1.5"]
    proc = subprocess.Popen(
        [*argv, "--", sys.executable, "-c", APP, consul_agent.url, str(seen)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        entries = eventually(
            lambda: [e for e in consul_agent.health("shop") if e["Checks"][-1]["Status"] == "passing"],
            timeout=20,
            what="shop registered with a passing HTTP check",
        )
        service = entries[0]["Service"]
        assert (service["ID"], service["Port"], sorted(service["Tags"])) == (
            "shop",
            backend.port,
            ["blue", "v1"],
        )

        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        took = time.monotonic() - stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
        backends.close()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text  # the app exited 0 on its SIGTERM
    assert json.loads(seen.read_text())["services"] == []  # already deregistered when the app got SIGTERM
    assert consul_agent.health("shop") == []
    assert "register | basenode register info: drain ended after" in text
    assert took < 1.5 + 3, text  # the bound: drain + 3 s
