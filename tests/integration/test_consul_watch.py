"""The watch against a real `consul agent -dev`: catalog and KV changes become snapshots, failures do not."""

from __future__ import annotations

import base64
import itertools
import json
import logging
import subprocess
import threading
import urllib.error
from typing import List, Optional, Tuple

import pytest

from basenode.agent import agent_config, agent_program
from basenode.config import Agent, ConsulHTTP, Route, Settings, Watch
from basenode.consul import join_command
from basenode.dependency import KEY, SERVICE, Query, fetch_now
from basenode.routes import ROUTES_QUERY, ConsulUnavailable, Discovery, fetch_snapshot, static_snapshot
from basenode.snapshot import Snapshot
from basenode.status.document import probe_agent
from basenode.watch import SourceStatus, Watcher
from tests.conftest import require_binary
from tests.support import consul_agent as agents
from tests.support.consul_agent import ConsulAgent
from tests.support.consul_proxy import NOT_JSON, WRONG_SHAPE, ConsulProxy
from tests.support.ports import free_port
from tests.support.waiting import eventually

# The fixtures, under the names the tests ask for.
consul_agent = agents.consul_agent
consul_agent_session = agents.consul_agent_session

_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


class Recorder:
    """Runs the watch for HAProxy's routes (as sync does) in a thread and keeps every distinct snapshot."""

    def __init__(self, agent: ConsulAgent, routes: Tuple[Route, ...], **watch: object) -> None:
        settings = Settings(routes=routes, consul_http=ConsulHTTP(addr=agent.http_addr), watch=Watch(**watch))
        self.settings = settings
        self.watcher = Watcher(settings)
        self.discovery = Discovery(settings)
        self.snapshots: List[Snapshot] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.watcher.run, args=(self._changed, self.stop), daemon=True)

    def _changed(self, _changed: object) -> None:
        data = self.watcher.data()
        self.watcher.want("routes", self.discovery.wanted(data))
        snapshot = self.discovery.snapshot(data)
        if snapshot is not None and (not self.snapshots or snapshot != self.snapshots[-1]):
            self.snapshots.append(snapshot)

    def source(self, query: Query) -> SourceStatus:
        """The read state of one dependency's blocking query."""
        return next(s for s in self.watcher.sources() if s.name == str(query))

    def __enter__(self) -> Recorder:
        self.watcher.want("routes", self.discovery.wanted({}))
        self.thread.start()
        eventually(lambda: self.snapshots, what="the first snapshot")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.watcher.close()
        assert not self.thread.is_alive()

    @property
    def last(self) -> Snapshot:
        return self.snapshots[-1]

    def ids(self, service: str, snapshot: Optional[Snapshot] = None) -> Optional[List[str]]:
        """Instance ids of `service` in the last snapshot, or None when it is not routed."""
        for state in (snapshot or self.last).routes:
            if state.route.service == service:
                return [i.id for i in state.instances]
        return None

    def wait_ids(self, service: str, expected: List[str], timeout: float = 10.0) -> None:
        want = sorted(expected)

        def matches() -> bool:
            ids = self.ids(service)
            return ids is not None and sorted(ids) == want

        eventually(matches, timeout=timeout, what=f"{service} instances == {want}")


def test_a_registered_service_appears_in_the_next_snapshot(consul_agent_session):
    agent, web = consul_agent_session, unique("web")
    with Recorder(agent, (Route(web, 19001),)) as rec:
        assert rec.ids(web) == []
        agent.register(web, 8080, service_id=f"{web}-1")
        rec.wait_ids(web, [f"{web}-1"])
        instance = rec.last.routes[0].instances[0]
        assert (instance.address, instance.port) == ("127.0.0.1", 8080)


def test_deregistration_or_a_failing_check_removes_the_instance(consul_agent_session):
    agent, web = consul_agent_session, unique("web")
    a, b = agent.register(web, 8081, service_id=f"{web}-a"), agent.register(web, 8082, service_id=f"{web}-b")
    with Recorder(agent, (Route(web, 19002),)) as rec:
        rec.wait_ids(web, [a, b])
        agent.set_check(a, "critical")
        rec.wait_ids(web, [b])
        agent.deregister(b)
        rec.wait_ids(web, [])
        agent.set_check(a, "passing")
        rec.wait_ids(web, [a])


def test_warning_instances_are_routed_only_with_include_warning(consul_agent_session):
    agent, web = consul_agent_session, unique("web")
    ok = agent.register(web, 8081, service_id=f"{web}-ok")
    warn = agent.register(web, 8082, service_id=f"{web}-warn", status="warning")
    with (
        Recorder(agent, (Route(web, 19003),)) as strict,
        Recorder(agent, (Route(web, 19003),), include_warning=True) as lenient,
    ):
        strict.wait_ids(web, [ok])
        lenient.wait_ids(web, [ok, warn])
        agent.set_check(ok, "warning")
        strict.wait_ids(web, [])
        lenient.wait_ids(web, [ok, warn])


def test_an_instance_re_registered_at_a_new_port_is_followed(consul_agent_session):
    agent, web = consul_agent_session, unique("web")
    sid = agent.register(web, 8080, service_id=f"{web}-1")
    with Recorder(agent, (Route(web, 19007),)) as rec:
        rec.wait_ids(web, [sid])
        agent.register(web, 8081, service_id=sid)  # same id, same counts: the summaries cannot show it
        eventually(lambda: [i.port for i in rec.last.routes[0].instances] == [8081], what="the new port")
        agent.register(web, 8082, service_id=sid, address="127.0.0.2")
        eventually(
            lambda: [(i.address, i.port) for i in rec.last.routes[0].instances] == [("127.0.0.2", 8082)],
            what="the new address",
        )


def test_a_burst_of_twenty_registrations_becomes_few_snapshots(consul_agent_session):
    agent, web = consul_agent_session, unique("web")
    with Recorder(agent, (Route(web, 19004),)) as rec:
        before = len(rec.snapshots)
        ids = sorted(agent.register(web, 9000 + i) for i in range(20))
        rec.wait_ids(web, ids)
        emitted = len(rec.snapshots) - before
        # One at the leading edge, then coalesced ones; far from one per registration.
        assert 1 <= emitted <= 6, emitted


def test_the_same_state_is_not_emitted_twice(consul_agent_session):
    agent, web, other = consul_agent_session, unique("web"), unique("other")
    with Recorder(agent, (Route(web, 19005),)) as rec:
        agent.register(web, 8080)
        rec.wait_ids(web, [f"{web}-8080"])
        count = len(rec.snapshots)
        agent.register(other, 8080)  # wakes the catalog read; changes nothing routed
        eventually(lambda: agent.health(other), what="other registered")
        agent.register(web, 8081)
        rec.wait_ids(web, [f"{web}-8080", f"{web}-8081"])
        assert len(rec.snapshots) == count + 1


def test_a_hostile_registration_is_dropped_with_a_warning(consul_agent_session, caplog):
    agent, web = consul_agent_session, unique("web")
    good = agent.register(web, 8080, service_id=f"{web}-good")
    hostile = [
        {"ID": f"{web}-tag", "Name": web, "Port": 8081, "Address": "127.0.0.1", "Tags": ["x\nbind :1"]},
        {"ID": f"{web}-addr", "Name": web, "Port": 8082, "Address": "1.2.3.4; rm"},
        {"ID": f"{web}-port", "Name": web, "Port": 70000, "Address": "127.0.0.1"},
        {"ID": f"{web}-big", "Name": web, "Port": 8083, "Address": "127.0.0.1", "Tags": ["x" * (1 << 20)]},
    ]
    accepted = []
    for body in hostile:
        try:
            agent.register_raw(body)
            accepted.append(body["ID"])
        except urllib.error.HTTPError:
            pass  # Consul refused it itself: it can never reach us
    assert accepted, "Consul refused every hostile registration: the test proves nothing"
    eventually(lambda: len(agent.health(web)) == 1 + len(accepted), what="hostile instances in the catalog")
    with (
        caplog.at_level(logging.WARNING, logger="basenode.watch"),
        Recorder(agent, (Route(web, 19006),)) as rec,
    ):
        rec.wait_ids(web, [good])
        for sid in accepted:
            eventually(
                lambda sid=sid: any(sid in r.getMessage() for r in caplog.records),
                what=f"a warning naming {sid}",
            )
        agent.register(web, 8090)  # another change: the same problems are not logged again
        rec.wait_ids(web, [good, f"{web}-8090"])
        for sid in accepted:
            assert sum(sid in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records) == 1
        assert all(len(r.getMessage()) < 1000 for r in caplog.records)


def test_routes_come_and_go_with_consul_kv_and_bad_values_are_skipped(consul_agent, caplog):
    agent = consul_agent
    agent.register("db", 5432)
    with (
        caplog.at_level(logging.WARNING, logger="basenode.watch"),
        Recorder(agent, (Route("web", 19010),)) as rec,
    ):
        assert rec.ids("db") is None
        agent.kv_put("basenode/routes/db", "19011/tcp")
        eventually(lambda: rec.ids("db") == ["db-5432"], what="the KV route to db")
        agent.kv_put("basenode/routes/bad", "70000/tcp")
        agent.kv_put("basenode/routes/web", "19999")  # clashes with the static route: static wins
        agent.kv_put("basenode/routes/cache", "19012 tag=primary")
        eventually(lambda: rec.ids("cache") == [], what="the KV route to cache")
        assert [s.route.port for s in rec.last.routes if s.route.service == "web"] == [19010]
        eventually(
            lambda: any(
                "basenode/routes/bad" in r.getMessage() and "70000" in r.getMessage() for r in caplog.records
            ),
            what="a warning naming the bad key and value",
        )
        assert rec.ids("bad") is None
        agent.kv_delete("basenode/routes/db")
        eventually(lambda: rec.ids("db") is None, what="the KV route to db to go")
        warned = [r for r in caplog.records if "basenode/routes/bad" in r.getMessage()]
        assert len(warned) == 1


def test_while_consul_is_down_the_last_good_state_stays_and_changes_flow_after_restart(consul_agent):
    agent, web = consul_agent, "web"
    for i in range(30):  # the catalog index climbs well above where the restarted agent will be
        agent.catalog_register("external-node", "filler", 7000 + i)
    agent.register(web, 8080, service_id="web-1")  # web's own index: above the fillers'
    with Recorder(agent, (Route(web, 19020),)) as rec:
        rec.wait_ids(web, ["web-1"])
        eventually(lambda: rec.source(Query(SERVICE, web)).index > 40, what="web's index to pass 40")
        good = len(rec.snapshots)
        agent.stop()
        eventually(lambda: rec.source(Query(SERVICE, web)).failures >= 2, what="reads to fail")
        assert len(rec.snapshots) == good, "a snapshot was emitted while Consul was unreachable"
        assert rec.ids(web) == ["web-1"]
        with pytest.raises(ConsulUnavailable, match="cannot read Consul"):
            fetch_snapshot(rec.settings)
        agent.start()  # same ports; a -dev agent starts with an empty catalog and a much lower index
        agent.register(web, 8081, service_id="web-2")
        # Within the test's patience, far below the 5 min wait: the read after an error starts from index 0.
        rec.wait_ids(web, ["web-2"])
        assert rec.source(Query(SERVICE, web)).failures == 0
        agent.register(web, 8082, service_id="web-3")
        rec.wait_ids(web, ["web-2", "web-3"])


@pytest.mark.parametrize("garbage", [NOT_JSON, WRONG_SHAPE], ids=["not-json", "wrong-shape"])
def test_garbage_from_consul_is_an_error_and_the_last_good_state_stays(consul_agent_session, garbage):
    agent, web, cache = consul_agent_session, unique("web"), unique("cache")
    agent.register(web, 8080, service_id=f"{web}-1")
    agent.kv_put(f"basenode/routes/{cache}", "19051")
    proxy = ConsulProxy(agent.http_addr)
    try:
        with Recorder(proxy, (Route(web, 19050),)) as rec:  # type: ignore[arg-type]
            rec.wait_ids(web, [f"{web}-1"])
            rec.wait_ids(cache, [])
            good = len(rec.snapshots)
            proxy.set_mode("garbage", garbage)
            for source in (Query(SERVICE, web), ROUTES_QUERY):
                eventually(lambda s=source: rec.source(s).failures >= 2, what=f"{source} reads to fail")
            assert len(rec.snapshots) == good, "garbage from Consul was taken for a new state"
            assert rec.ids(web) == [f"{web}-1"] and rec.ids(cache) == []
            with pytest.raises(ConsulUnavailable):
                fetch_snapshot(rec.settings)
            reachable, leader, _ = probe_agent(rec.settings)  # what /health asks
            assert not (reachable and leader)
            proxy.set_mode("pass")
            agent.register(web, 8081, service_id=f"{web}-2")
            rec.wait_ids(web, [f"{web}-1", f"{web}-2"], timeout=30)  # after a backoff of up to 10 s
    finally:
        proxy.close()
        agent.kv_delete(f"basenode/routes/{cache}")


def test_fetch_snapshot_reads_routes_and_healthy_instances_once(consul_agent_session):
    agent, web = consul_agent_session, unique("web")
    agent.register(web, 8080)
    agent.register(web, 8081, status="critical")
    settings = Settings(routes=(Route(web, 19040),), consul_http=ConsulHTTP(addr=agent.http_addr))
    snapshot = fetch_snapshot(settings)
    assert [(s.route.service, [i.port for i in s.instances]) for s in snapshot.routes] == [(web, [8080])]


def test_the_generated_agent_config_is_accepted_by_consul(tmp_path):
    settings = Settings(
        state_dir=tmp_path,
        consul_http=ConsulHTTP(addr="127.0.0.1:18500", token="11111111-2222-3333-4444-555555555555"),
        agent=Agent(
            join=("10.0.0.2",), datacenter="dc2", node_name="n1", encrypt=base64.b64encode(b"k" * 32).decode()
        ),
    )
    path = tmp_path / "consul.json"
    path.write_text(json.dumps(agent_config(settings)))
    result = subprocess.run(
        [require_binary("consul"), "validate", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert agent_program(settings).command[2] == f"-config-file={path}"


def test_join_joins_the_local_agent_to_another_and_fails_clearly_on_a_dead_address(consul_agent, capsys):
    other = agents.ConsulAgent(binary=require_binary("consul"))
    other.start()
    try:
        settings = Settings(consul_http=ConsulHTTP(addr=consul_agent.http_addr))
        target = f"127.0.0.1:{other.ports['serf_lan']}"
        assert join_command(settings, [target], timeout=20) == 0
        eventually(
            lambda: other.node_name in {m["Name"] for m in consul_agent.get("/v1/agent/members")},
            what="the other agent among the members",
        )
        dead = f"127.0.0.1:{free_port()}"
        assert join_command(settings, [dead], timeout=1) == 1
        assert dead in capsys.readouterr().err
    finally:
        other.close()


def test_the_agent_probe_and_static_snapshot_for_check_and_health(consul_agent_session):
    settings = Settings(
        routes=(Route("web", 19050),), consul_http=ConsulHTTP(addr=consul_agent_session.http_addr)
    )
    reachable, leader, _ = probe_agent(settings)
    assert reachable and leader
    dead = Settings(consul_http=ConsulHTTP(addr=f"127.0.0.1:{free_port()}"))
    reachable, _, error = probe_agent(dead)
    assert reachable is False and error.startswith(f"cannot read {dead.consul_http.addr}")
    with pytest.raises(ConsulUnavailable):
        fetch_snapshot(dead, timeout=2)
    assert [(s.route.service, s.instances) for s in static_snapshot(settings).routes] == [("web", ())]


def test_a_key_with_an_empty_value_is_empty_text_and_a_missing_one_is_none(consul_agent_session):
    key = unique("app/empty")
    consul_agent_session.kv_put(key, "")
    http = ConsulHTTP(addr=consul_agent_session.http_addr)
    values, _ = fetch_now(http, [Query(KEY, key), Query(KEY, key + "-gone")])
    assert values[Query(KEY, key)] == ""  # Consul answers "Value": null for it
    assert values[Query(KEY, key + "-gone")] is None
