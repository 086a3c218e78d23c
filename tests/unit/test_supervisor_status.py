"""Health from PID 1's programs alone, and the supervisor-only status document."""

from __future__ import annotations

from basenode.status import commands, health, supervisor


def program(name: str, state: str = "running", **fields) -> dict:
    view = {"name": name, "state": state, "pid": 10, "uptime": 1.0, "restarts": 0, "last_exit": None}
    return {**view, "ready": True, "required": False, **fields}


def test_running_programs_and_a_running_application_are_healthy():
    programs = [program("side"), program("app")]
    assert health.program_problems(programs) == []
    doc = supervisor.document(programs)
    assert doc["healthy"] is True and doc["problems"] == []


def test_a_required_fatal_program_is_a_problem_an_optional_one_is_not():
    programs = [program("db", "fatal", required=True), program("extra", "fatal"), program("app")]
    assert health.program_problems(programs) == ["programs: required program db is FATAL"]


def test_an_application_that_does_not_run_or_is_not_ready_is_a_problem():
    for state in ("waiting", "starting", "exited", "fatal", "stopping"):
        problems = health.program_problems([program("app", state)])
        assert problems == [f"programs: the application is {state}, not running"]
    assert health.program_problems([program("app", ready=False)]) == [
        "programs: the application runs but is not ready yet"
    ]


def test_the_supervisor_document_has_the_full_documents_keys_with_what_does_not_apply_null():
    doc = supervisor.document([program("app")])
    full_keys = {
        "version", "healthy", "problems", "warnings", "programs", "routes", "routes_refused",
        "consul", "haproxy", "sync", "watch", "last_error", "templates",
    }  # fmt: skip
    assert set(doc) == full_keys
    assert (doc["consul"], doc["sync"], doc["watch"]) == (None, None, None)
    assert doc["haproxy"] == {"enabled": False, "running": False}
    table = commands.format_table(doc)
    assert "app" in table and "supervisor only" in table and "ROUTE" not in table


def test_a_sync_loop_whose_endpoint_does_not_answer_is_a_problem():
    doc = supervisor.document([program("sync"), program("app")], endpoint_error="refused")
    assert doc["problems"] == ["sync: the status endpoint does not answer: refused"]
    assert supervisor.runs_sync(doc["programs"])


def test_the_full_documents_health_includes_the_programs_problems():
    from tests.unit.test_status import HEALTHY, doc_with

    assert health.problems(HEALTHY, max_age=600) == []
    programs = [*HEALTHY["programs"], program("app", "waiting")]
    assert health.problems(doc_with(programs=programs), max_age=600) == [
        "programs: the application is waiting, not running"
    ]
