"""Files written while HAProxy did not answer, after HAProxy could start: what the next apply trusts.

HAProxy may have been starting and have read the file a moment before: then it runs an older text
than the file on disk. When every text it could have read has one skeleton, the next apply compares
every backend's servers with what runs (no reload); otherwise it reloads. The sync loop's rule, on a
fake HAProxy (what apply does with each baseline on a real one is in
tests/integration/test_haproxy_apply.py).
"""

from __future__ import annotations

from typing import List

import pytest

from basenode import sync
from basenode.config import Route, Settings
from basenode.output import haproxy
from basenode.snapshot import Instance, RouteState, Snapshot


class FakeHAProxy:
    def __init__(self) -> None:
        self.answers = False
        self.baselines: List[str] = []

    def apply(self, settings, previous, snapshot, text, *, baseline=haproxy.LIVE, **_):
        self.baselines.append(baseline)
        if not self.answers:
            return haproxy.ApplyResult(how="written", seconds=0.0)
        return haproxy.ApplyResult(how="reload" if baseline == haproxy.UNKNOWN else "runtime", seconds=0.0)

    def running(self, settings, settle=2.0):
        return self.answers


@pytest.fixture
def fake(monkeypatch):
    fake = FakeHAProxy()
    monkeypatch.setattr(sync.haproxy, "apply", fake.apply)
    monkeypatch.setattr(sync.haproxy, "running", fake.running)
    return fake


def snapshot(port: int, *addresses: str) -> Snapshot:
    instances = tuple(Instance(a, "n1", a, 80) for a in addresses)
    return Snapshot((RouteState(Route("web", port), instances),))


def test_server_changes_written_while_haproxy_started_are_compared_with_every_backend_not_reloaded(
    tmp_path, fake
):
    loop = sync.Loop(Settings(state_dir=tmp_path))
    loop._apply(snapshot(9000, "10.0.0.1"), {}, template_changed=False)  # before HAProxy may start
    assert not loop.baseline.unconfirmed
    loop.programs_started = True
    loop.latest = snapshot(9000, "10.0.0.2")
    loop._apply(loop.latest, {}, template_changed=False)  # HAProxy starting, not answering yet
    loop._haproxy_tick({})  # still not answering: nothing to do
    assert fake.baselines == [haproxy.LIVE, haproxy.LIVE] and loop.baseline.unconfirmed
    fake.answers = True
    loop._haproxy_tick({})
    assert fake.baselines[-1] == haproxy.SERVERS and not loop.baseline.unconfirmed
    loop._haproxy_tick({})
    assert len(fake.baselines) == 3  # once


def test_a_route_change_written_while_haproxy_started_reloads_at_the_next_apply(tmp_path, fake):
    loop = sync.Loop(Settings(state_dir=tmp_path))
    loop._apply(snapshot(9000, "10.0.0.1"), {}, template_changed=False)
    loop.programs_started = True
    loop._apply(snapshot(9001, "10.0.0.1"), {}, template_changed=False)  # another frontend port
    fake.answers = True
    loop._apply(snapshot(9001, "10.0.0.3"), {}, template_changed=False)  # the watch's next change
    assert fake.baselines == [haproxy.LIVE, haproxy.LIVE, haproxy.UNKNOWN]
    assert not loop.baseline.unconfirmed
