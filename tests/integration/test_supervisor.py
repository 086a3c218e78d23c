"""The supervisor against real processes: restarts, FATAL, stops, dependencies, signals, output.

Each test runs basenode.supervise in a child process (tests/support/supervise_helpers.py), so signals,
reaping and exit statuses are the real ones. Short startsecs/backoff values keep the suite fast.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import sys

import pytest

from tests.support.supervise_helpers import pid_alive, program, start, wait_for_text
from tests.support.waiting import eventually


@pytest.fixture
def harness(tmp_path):
    runs = []

    def _start(programs, **options):
        run = start(tmp_path / f"run{len(runs)}", programs, **options)
        runs.append(run)
        return run

    yield _start
    for run in runs:
        run.kill()


def app(*command, **fields):
    """The application COMMAND, as `basenode run -- COMMAND` passes it."""
    defaults = {"main": True, "autorestart": "never", "startsecs": 0, "forward_signals": ["HUP", "USR1"]}
    return program("app", *command, **{**defaults, **fields})


def prefixed(text: str, name: str):
    return [line[len(name) + 3 :] for line in text.splitlines() if line.startswith(f"{name} | ")]


# ----------------------------------------------------------------------------- restarts and FATAL


def test_a_crashing_program_is_restarted_with_doubling_backoff_and_its_restarts_are_counted(
    harness, tmp_path
):
    runs = tmp_path / "runs"
    crasher = program(
        "crasher",
        "sh",
        "-c",
        f"echo run >> {runs}; exit 3",
        startsecs=0,
        autorestart="on-failure",
        backoff_initial=0.05,
        backoff_max=0.4,
        startretries=1,  # crashes after it was up are not failed starts: they never make it FATAL
    )
    waiter = app("sh", "-c", f"until [ $(cat {runs} 2>/dev/null | wc -l) -ge 5 ]; do sleep 0.02; done")
    run = harness([crasher, waiter])
    assert run.wait() == 0, run.stderr()

    crasher_state = run.states()["crasher"]
    assert crasher_state["restarts"] >= 4
    assert crasher_state["state"] != "fatal"
    delays = [float(d) for d in re.findall(r"crasher: restart \d+ in ([0-9.]+)s", run.stderr())]
    assert len(delays) >= 4
    # Doubling from backoff_initial, capped at backoff_max, each with at most 20 % jitter down.
    for delay, planned in zip(delays, [0.05, 0.1, 0.2, 0.4, 0.4]):
        assert planned * 0.8 - 0.001 <= delay <= planned + 0.001, delays


def test_a_program_that_keeps_failing_to_start_goes_fatal_after_startretries(harness):
    flaky = program(
        "flaky",
        "sh",
        "-c",
        "echo trying; exit 3",
        startsecs=10,
        startretries=3,
        backoff_initial=0.01,
        backoff_max=0.02,
    )
    run = harness([flaky])
    assert run.wait() == 0, run.stderr()  # not required: basenode ends once nothing is left to run

    state = run.states()["flaky"]
    assert (state["state"], state["failed_starts"], state["restarts"]) == ("fatal", 3, 2)
    assert prefixed(run.stdout(), "flaky") == ["trying"] * 3
    assert "flaky: FATAL: exited with status 3 before it was up; 3 failed start(s) in a row" in run.stderr()


def test_a_required_program_going_fatal_stops_basenode_with_status_1(harness):
    needed = program(
        "needed", "sh", "-c", "exit 3", startsecs=10, startretries=2, backoff_initial=0.01, required=True
    )
    run = harness([needed, app("sleep", "100")])
    assert run.wait() == 1, run.stderr()

    states = run.states()
    assert states["needed"]["state"] == "fatal"
    assert (states["app"]["state"], states["app"]["last_exit"]) == ("stopped", 128 + signal.SIGTERM)


def test_a_main_program_that_cannot_be_executed_ends_basenode_with_127(harness):
    run = harness([app("/nonexistent/command")])
    assert run.wait() == 127
    assert "app: cannot start /nonexistent/command" in run.stderr()


@pytest.mark.parametrize(
    ("policy", "status", "restarted"),
    [("never", 3, False), ("on-failure", 0, False), ("on-failure", 3, True), ("always", 0, True)],
)
def test_autorestart_policy_decides_whether_a_program_that_was_up_is_restarted(
    harness, tmp_path, policy, status, restarted
):
    runs = tmp_path / "runs"
    worker = program(
        "worker",
        "sh",
        "-c",
        f"echo run >> {runs}; exit {status}",
        startsecs=0,
        autorestart=policy,
        backoff_initial=0,
    )
    if restarted:
        run = harness(
            [worker, app("sh", "-c", f"until [ $(cat {runs} | wc -l) -ge 3 ]; do sleep 0.02; done")]
        )
        assert run.wait() == 0, run.stderr()
        assert run.states()["worker"]["restarts"] >= 2
    else:
        # Nothing else runs: basenode ends by itself only because the worker is not restarted.
        run = harness([worker])
        assert run.wait() == 0, run.stderr()
        assert runs.read_text() == "run\n"
        assert run.states()["worker"]["state"] == "exited"


# ----------------------------------------------------------------------------- stopping


def test_a_program_that_ignores_sigterm_is_killed_after_its_stop_timeout(harness):
    stubborn = program(
        "stubborn",
        "sh",
        "-c",
        "trap '' TERM; echo pid $$; while :; do sleep 0.05; done",
        stop_timeout=0.5,
        startsecs=0,
    )
    run = harness([stubborn])
    pid = int(re.search(r"stubborn \| pid (\d+)", wait_for_text(run.stdout, "stubborn | pid ")).group(1))

    run.send(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGTERM
    assert "stubborn: did not stop within its stop timeout: SIGKILL" in run.stderr()
    assert run.states()["stubborn"]["last_exit"] == 128 + signal.SIGKILL
    assert not pid_alive(pid)


def test_a_program_is_stopped_with_its_own_stop_signal(harness):
    agent = program(
        "agent",
        "sh",
        "-c",
        "trap 'echo leaving on INT; exit 0' INT; trap 'echo got TERM' TERM;"
        " echo up; while :; do sleep 0.05; done",
        stop_signal="INT",
        startsecs=0,
    )
    run = harness([agent])
    wait_for_text(run.stdout, "agent | up")
    run.send(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGTERM
    assert prefixed(run.stdout(), "agent") == ["up", "leaving on INT"]
    assert run.states()["agent"]["last_exit"] == 0


def test_processes_a_program_started_in_the_background_do_not_outlive_basenode(harness):
    leaver = program("leaver", "sh", "-c", "sleep 1000 & echo child $!; exec sleep 1000", startsecs=0)
    run = harness([leaver])
    child = int(re.search(r"leaver \| child (\d+)", wait_for_text(run.stdout, "leaver | child ")).group(1))
    assert pid_alive(child)

    run.send(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGTERM
    assert not pid_alive(child)


ZOMBIE_KEEPER = """
import os, time
if os.fork() == 0:
    zombie = os.fork()
    if zombie == 0:
        os._exit(0)  # exits at once: a zombie of its parent, left in the program's process group
    os.setsid()  # the parent leaves the group and never reaps it
    print("keeper", os.getpid(), flush=True)
    time.sleep(1000)
time.sleep(1000)
"""


def test_a_zombie_in_a_programs_group_that_basenode_cannot_reap_does_not_hang_the_stop(harness):
    run = harness([program("z", sys.executable, "-c", ZOMBIE_KEEPER, startsecs=0, stop_timeout=0.3)])
    keeper = int(re.search(r"z \| keeper (\d+)", wait_for_text(run.stdout, "z | keeper")).group(1))
    try:
        run.send(signal.SIGTERM)
        assert run.wait() == 128 + signal.SIGTERM
        assert re.search(r"z: giving up on pid None and process groups \[\d+\] after SIGKILL", run.stderr())
    finally:
        os.kill(keeper, signal.SIGKILL)


def test_programs_stop_in_reverse_start_order(harness, tmp_path):
    ready = tmp_path / "db-ready"
    db = program("db", "sh", "-c", f"touch {ready}; exec sleep 100", ready_file=str(ready), startsecs=0)
    web = program("web", "sh", "-c", "echo up; exec sleep 100", depends_on=["db"], startsecs=0)
    cache = program("cache", "sh", "-c", "echo up; exec sleep 100", depends_on=["web"], startsecs=0)
    run = harness([cache, web, db])  # config order is not start order: dependencies decide
    wait_for_text(run.stdout, "cache | up")

    run.send(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGTERM
    log = run.stderr()
    started = [log.index(f"{name}: started pid") for name in ("db", "web", "cache")]
    stopped = [log.index(f"{name}: sending SIGTERM") for name in ("cache", "web", "db")]
    assert started == sorted(started)
    assert stopped == sorted(stopped)


def test_a_stop_first_program_stops_before_the_programs_that_started_after_it(harness, tmp_path):
    ready = tmp_path / "rendered"
    sync = program(
        "sync",
        "sh",
        "-c",
        f"touch {ready}; exec sleep 100",
        ready_file=str(ready),
        startsecs=0,
        stop_first=True,
    )
    proxy = program("proxy", "sh", "-c", "echo up; exec sleep 100", depends_on=["sync"], startsecs=0)
    run = harness([proxy, sync])
    wait_for_text(run.stdout, "proxy | up")

    run.send(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGTERM
    log = run.stderr()
    assert log.index("sync: started pid") < log.index("proxy: started pid")
    assert log.index("sync: sending SIGTERM") < log.index("proxy: sending SIGTERM")


def test_a_second_sigterm_during_the_stop_does_not_restart_it(harness):
    slow = app(
        "sh",
        "-c",
        "trap 'echo got TERM; sleep 0.5; echo done; exit 0' TERM; echo ready; while :; do sleep 0.05; done",
        stop_timeout=5,
    )
    run = harness([slow])
    wait_for_text(run.stdout, "app | ready")
    run.send(signal.SIGTERM)
    wait_for_text(run.stdout, "app | got TERM")
    run.send(signal.SIGTERM)

    assert run.wait() == 0  # the application's own status, as tini returns it
    assert prefixed(run.stdout(), "app") == ["ready", "got TERM", "done"]
    assert "SIGTERM: already stopping" in run.stderr()


# ----------------------------------------------------------------------------- dependencies


def test_a_program_starts_only_once_its_dependency_is_up_and_its_ready_file_exists(harness, tmp_path):
    ready = tmp_path / "ready"
    db = program(
        "db", "sh", "-c", f"sleep 0.3; touch {ready}; exec sleep 100", ready_file=str(ready), startsecs=0.1
    )
    web = program(
        "web",
        "sh",
        "-c",
        f"if [ -e {ready} ]; then echo ready file present; else echo too early; fi; exec sleep 100",
        depends_on=["db"],
        startsecs=0,
    )
    run = harness([web, db])
    wait_for_text(run.stdout, "web | ")
    run.send(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGTERM
    assert prefixed(run.stdout(), "web") == ["ready file present"]


def test_a_one_shot_dependency_that_succeeds_lets_its_dependents_start(harness):
    migrate = program("migrate", "sh", "-c", "echo migrated", autorestart="on-failure", startsecs=5)
    run = harness([migrate, app("echo", "serving", depends_on=["migrate"])])
    assert run.wait() == 0, run.stderr()
    assert run.stdout().index("migrate | migrated") < run.stdout().index("app | serving")


def test_a_program_whose_dependency_is_fatal_goes_fatal_instead_of_waiting_forever(harness):
    broken = program("broken", "sh", "-c", "exit 1", startsecs=5, startretries=1)
    web = program("web", "echo", "never printed", depends_on=["broken"])
    run = harness([web, broken])
    assert run.wait() == 0, run.stderr()
    assert {name: s["state"] for name, s in run.states().items()} == {"web": "fatal", "broken": "fatal"}
    assert "web: FATAL: dependency 'broken' is FATAL" in run.stderr()
    assert "never printed" not in run.stdout()


def test_a_dependency_cycle_does_not_hang_basenode(harness):
    a = program("a", "sleep", "100", depends_on=["b"])
    b = program("b", "sleep", "100", depends_on=["a"])
    web = program("web", "sleep", "100", depends_on=["a"], required=True)
    run = harness([a, b, web])
    assert run.wait() == 1
    assert "b: FATAL: depends_on has a cycle: b -> a -> b" in run.stderr()
    assert "web: FATAL: dependency 'a' is FATAL" in run.stderr()


# ----------------------------------------------------------------------------- PID-1 duties and signals


def test_orphans_of_a_program_are_reaped_when_basenode_is_not_pid_1(harness):
    # Each orphan's parent exits at once, so the kernel re-parents it to the nearest subreaper: basenode.
    orphans = app(
        "sh",
        "-c",
        "for i in $(seq 50); do"
        "  pid=$(sh -c 'sleep 1 >/dev/null & echo $!');"
        "  echo orphan $pid $(cut -d' ' -f4 /proc/$pid/stat);"
        " done; echo spawned; exec sleep 100",
    )
    run = harness([orphans])
    out = wait_for_text(run.stdout, "app | spawned")
    found = re.findall(r"app \| orphan (\d+) (\d+)", out)
    assert len(found) == 50
    assert {int(parent) for _, parent in found} == {run.pid}
    # Once they exit, nothing is left of them, not even a zombie.
    pids = [int(pid) for pid, _ in found]
    eventually(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in pids), what="orphans reaped")
    run.send(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGTERM


def test_forwarded_signals_reach_only_the_programs_that_ask_for_them(harness):
    trap_loop = "trap 'echo got HUP' HUP; trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done"
    other = program("other", "sh", "-c", trap_loop, startsecs=0)
    run = harness([other, app("sh", "-c", trap_loop.replace("echo got HUP", "echo got HUP; exit 0"))])
    wait_for_text(run.stdout, "app | ready")
    wait_for_text(run.stdout, "other | ready")

    run.send(signal.SIGHUP)
    assert run.wait() == 0
    assert prefixed(run.stdout(), "app") == ["ready", "got HUP"]
    assert prefixed(run.stdout(), "other") == ["ready"]


def test_children_start_with_default_signal_dispositions_and_an_empty_mask(harness):
    # basenode inherited ignored signals (as a backgrounded process does) and a blocked mask.
    run = harness(
        [app("grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status")],
        shell_prefix="trap '' INT QUIT USR2 TTOU ALRM;",
        block_signals=["TERM", "CHLD", "USR1"],
    )
    assert run.wait() == 0, run.stderr()
    blocked, ignored = (int(line.split()[1], 16) for line in prefixed(run.stdout(), "app"))
    # Signals 32 and 33 belong to the C library (glibc's thread cancellation and set*id): no program
    # can catch, ignore or reset them through it, so only the signals programs use are checked.
    usable = sum(1 << (sig - 1) for sig in signal.valid_signals())
    assert (blocked & usable, ignored & usable) == (0, 0), f"blocked {blocked:#x}, ignored {ignored:#x}"


def test_a_program_runs_as_its_user_with_its_groups_directory_and_environment(harness, tmp_path):
    nobody = pwd.getpwnam("nobody")
    run = harness(
        [
            app(
                "sh",
                "-c",
                'id -un; id -G; pwd; echo "$GREETING $HOME"',
                user="nobody",
                directory=str(tmp_path),
                environment={"GREETING": "hello"},
            )
        ]
    )
    assert run.wait() == 0, run.stderr()
    groups = " ".join(str(g) for g in sorted(set(os.getgrouplist("nobody", nobody.pw_gid))))
    lines = prefixed(run.stdout(), "app")
    assert lines[0] == "nobody"
    assert " ".join(sorted(lines[1].split(), key=int)) == groups
    assert lines[2:] == [str(tmp_path), f"hello {nobody.pw_dir}"]


# ----------------------------------------------------------------------------- output


def test_interleaved_output_of_five_chatty_programs_arrives_complete_each_line_whole_and_prefixed(harness):
    # Python's buffered writes cut lines at arbitrary points; basenode must put them back together.
    chatty = (
        "import random, sys\n"
        "name = sys.argv[1]\n"
        "for i in range(3000):\n"
        "    out = sys.stdout if i % 2 == 0 else sys.stderr\n"
        "    out.write(f'{name}-{i}-' + 'x' * random.randint(0, 300) + '\\n')\n"
    )
    names = [f"chatty{n}" for n in range(5)]
    run = harness([program(name, sys.executable, "-c", chatty, name, startsecs=0) for name in names])
    assert run.wait() == 0, run.stderr()

    pattern = re.compile(r"^(chatty\d) \| (chatty\d)-(\d+)-x*$")
    for text, parity in ((run.stdout(), 0), (run.stderr(), 1)):
        seen = {name: [] for name in names}
        for line in text.splitlines():
            if line.startswith("basenode "):
                continue  # basenode's own log lines share stderr
            m = pattern.match(line)
            assert m and m.group(1) == m.group(2), f"broken line: {line[:200]!r}"
            seen[m.group(1)].append(int(m.group(3)))
        for name in names:
            assert seen[name] == list(range(parity, 3000, 2)), name


def test_a_partial_last_line_is_not_lost(harness):
    run = harness(
        [program("p", "sh", "-c", "printf 'first\\nno newline at the end'; printf 'err partial' >&2")]
    )
    assert run.wait() == 0
    assert run.stdout() == "p | first\np | no newline at the end\n"
    assert "p | err partial\n" in run.stderr()


def test_binary_output_and_a_one_megabyte_line_do_not_break_basenode(harness):
    big = (
        "import sys\n"
        "w = sys.stdout.buffer.write\n"
        "w(b'x' * (1 << 20) + b'\\n')\n"
        "w(bytes(range(256)) + b'\\n')\n"
        "w(b'after\\n')\n"
    )
    ticker = program("ticker", "sh", "-c", "i=0; while [ $i -lt 100 ]; do echo tick $i; i=$((i+1)); done")
    run = harness([program("big", sys.executable, "-c", big), ticker])
    assert run.wait() == 0, run.stderr()

    out = run.stdout_bytes()
    lines = out.split(b"\n")
    xs = [line[len(b"big | ") :] for line in lines if line.startswith(b"big | x")]
    assert all(set(chunk) == {ord("x")} and len(chunk) <= 64 * 1024 for chunk in xs)
    assert sum(len(chunk) for chunk in xs) == 1 << 20
    # The binary line arrives byte for byte (its 0x0a splits it in two lines, as it would in a terminal).
    assert b"big | " + bytes(range(10)) + b"\nbig | " + bytes(range(11, 256)) + b"\n" in out
    assert b"big | after\n" in out
    assert [line for line in lines if line.startswith(b"ticker | ")] == [
        f"ticker | tick {i}".encode() for i in range(100)
    ]


# ----------------------------------------------------------------------------- the read-only view


def _history(events):
    history = {}
    for event in events:
        for name, state in event.get("states", {}).items():
            seen = history.setdefault(name, [])
            if not seen or seen[-1] != state:
                seen.append(state)
    return history


def test_callbacks_see_every_state_a_program_passes_through_and_each_time_it_is_ready(harness, tmp_path):
    ready = tmp_path / "ready"
    db = program("db", "sh", "-c", f"touch {ready}; exec sleep 100", ready_file=str(ready), startsecs=0.05)
    run = harness([db, app("true", depends_on=["db"])])
    assert run.wait() == 0, run.stderr()
    assert [e["started"] for e in run.events() if "started" in e] == ["db", "app"]
    history = _history(run.events())
    assert history["db"] == ["starting", "running", "stopping", "stopped"]
    assert history["app"] == ["waiting", "running", "exited"]

    flaky = program("flaky", "sh", "-c", "exit 3", startsecs=10, startretries=2, backoff_initial=0.01)
    run = harness([flaky])
    assert run.wait() == 0, run.stderr()
    assert [e for e in run.events() if "started" in e] == []
    assert _history(run.events())["flaky"] == ["starting", "backoff", "starting", "fatal"]
