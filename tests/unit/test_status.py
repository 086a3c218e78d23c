"""The status document's pure parts: health rules, the table, the metrics, JSON log lines."""

from __future__ import annotations

import copy
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from basenode import control
from basenode.status import commands, document, health, metrics
from basenode.status.state import SyncState
from basenode.supervise.output import json_line

HEALTHY = {
    "version": "0.1.0",
    "programs": [
        {"name": "sync", "state": "running", "pid": 10, "uptime": 5.0, "restarts": 0, "last_exit": None},
        {"name": "haproxy", "state": "running", "pid": 11, "uptime": 4.0, "restarts": 2, "last_exit": 143},
    ],
    "routes": [{"service": "web", "port": 9302, "mode": "http", "healthy": 2, "total": 3}],
    "consul": {
        "addr": "127.0.0.1:8500",
        "reachable": True,
        "leader": "127.0.0.1:8300",
        "last_index": 42,
        "errors": 0,
        "last_error": None,
    },
    "haproxy": {"enabled": True, "running": True},
    "sync": {
        "count": 3,
        "last_age": 1.0,
        "confirmed_age": 1.0,
        "last_duration": 0.02,
        "last_how": "runtime",
        "last_timestamp": 1.0,
        "runtime_applies": 2,
        "reloads": 0,
        "render_errors": 0,
        "check_failures": 0,
        "apply_errors": 0,
    },
    "last_error": None,
}


def doc_with(**changes):
    doc = copy.deepcopy(HEALTHY)
    for path, value in changes.items():
        target = doc
        *parents, leaf = path.split("__")
        for key in parents:
            target = target[key]
        target[leaf] = value
    return doc


def test_a_healthy_document_has_no_problems():
    assert health.problems(HEALTHY, max_age=600) == []


@pytest.mark.parametrize(
    ("changes", "prefix"),
    [
        (
            {"consul__reachable": False, "consul__last_error": "cannot read x: refused"},
            "consul: cannot read x",
        ),
        ({"consul__leader": None}, "consul: the agent answers but the cluster has no leader"),
        ({"consul__last_error": "kv reads failing (3 in a row): garbage"}, "consul: kv reads failing"),
        ({"haproxy__running": False}, "haproxy: the master socket does not answer"),
        ({"sync__count": 0}, "sync: no successful sync yet"),
        ({"sync__confirmed_age": 601.0}, "sync: last confirmed in step 601 s ago"),
        ({"last_error": "apply: [Errno 28] No space left on device"}, "apply: [Errno 28]"),
        ({"last_error": "render: t.j2:3: unexpected '}'"}, "render: t.j2:3"),
    ],
)
def test_each_fault_is_one_problem_with_its_area(changes, prefix):
    found = health.problems(doc_with(**changes), max_age=600)
    assert len(found) == 1 and found[0].startswith(prefix), found


def test_a_stopped_haproxy_program_is_named_by_its_state():
    doc = doc_with()
    doc["programs"][1]["state"] = "backoff"
    assert health.problems(doc, max_age=600) == ["haproxy: the program is backoff"]


def test_no_haproxy_means_no_haproxy_problem():
    assert health.problems(doc_with(haproxy__enabled=False, haproxy__running=False), max_age=600) == []


def test_confirmed_is_the_last_apply_or_the_oldest_source_answer_after_it():
    state = SyncState(last_sync=100.0)
    assert document._confirmed(state, [150.0, 130.0]) == 130.0
    assert document._confirmed(state, [150.0, None]) == 100.0  # a source never answered
    assert document._confirmed(state, [90.0]) == 100.0
    state.last_error = "apply: disk full"
    assert document._confirmed(state, [150.0]) == 100.0  # HAProxy still runs the older config


def test_the_table_fits_100_columns_even_with_long_names():
    doc = doc_with(last_error="check: " + "x" * 300)
    doc["routes"][0]["service"] = "s" * 128
    doc["programs"][0]["name"] = "p" * 64
    doc["problems"] = health.problems(doc, 600)
    doc["healthy"] = False
    table = commands.format_table(doc)
    assert max(len(line) for line in table.splitlines()) < 100
    assert table.startswith("basenode 0.1.0: UNHEALTHY")


def test_metrics_parse_as_prometheus_text_and_match_the_document():
    state = SyncState(syncs=3, last_sync=1234.5, check_failures=1)
    for seconds in (0.004, 0.03, 3.0):
        state.observe(seconds)
    state.applies["runtime"] = 2
    doc = doc_with()
    doc["healthy"], doc["problems"] = True, []
    families = {f.name: f for f in text_string_to_metric_families(metrics.metrics_text(doc, state).decode())}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    assert samples[("basenode_healthy", ())] == 1
    assert samples[("basenode_syncs_total", ())] == 3
    assert samples[("basenode_check_failures_total", ())] == 1
    assert samples[("basenode_applies_total", (("how", "runtime"),))] == 2
    assert samples[("basenode_route_instances", (("service", "web"),))] == 2
    assert samples[("basenode_program_restarts_total", (("program", "haproxy"),))] == 2
    assert samples[("basenode_program_up", (("program", "sync"),))] == 1
    assert samples[("basenode_last_sync_timestamp_seconds", ())] == 1234.5
    assert samples[("basenode_sync_duration_seconds_bucket", (("le", "0.005"),))] == 1
    assert samples[("basenode_sync_duration_seconds_bucket", (("le", "0.05"),))] == 2
    assert samples[("basenode_sync_duration_seconds_bucket", (("le", "+Inf"),))] == 3
    assert samples[("basenode_sync_duration_seconds_sum", ())] == pytest.approx(3.034)


@pytest.mark.parametrize(("name", "number"), [("HUP", 1), ("SIGUSR1", 10), ("term", 15)])
def test_control_signal_names(name, number):
    assert control._signal(name) == number


@pytest.mark.parametrize("name", ["", "NOPE", "1; rm", None])
def test_control_rejects_unknown_signals(name):
    with pytest.raises(ValueError):
        control._signal(name)


def test_a_child_line_becomes_one_json_object_named_after_its_program():
    entry = json.loads(json_line("app", "stderr", b'he said "hi" \xff'))
    assert entry["component"] == "app" and entry["level"] == "info"
    assert entry["message"] == 'he said "hi" \ufffd'
    assert entry["fields"] == {"program": "app", "stream": "stderr"}


def test_a_basenode_child_json_line_is_tagged_not_wrapped():
    own = b'{"time":"t","level":"error","component":"watch","message":"m","fields":{"n":1}}'
    entry = json.loads(json_line("sync", "stderr", own))
    assert entry["component"] == "watch" and entry["level"] == "error"
    assert entry["fields"] == {"n": 1, "program": "sync"}
    # Any other JSON-looking line is the program's own text.
    assert json.loads(json_line("app", "stdout", b'{"a": 1}'))["message"] == '{"a": 1}'
