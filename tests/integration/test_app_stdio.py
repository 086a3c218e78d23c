"""The application's stdin, stdout and stderr under `basenode run`, as with tini: its own.

On a real pseudo-terminal (tests/support/terminal.py) the application has the terminal on all three
and is its foreground process group, so Ctrl-C and an interactive shell's job control are its own.
With stdout a pipe, its bytes reach basenode's stdout untouched; `--app-output prefix` keeps the
`app | ` lines of other programs' output on request.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List

import pytest

from tests.conftest import ZIPAPP
from tests.support.ports import free_port
from tests.support.supervise_helpers import ROOT
from tests.support.terminal import Terminal
from tests.support.waiting import eventually


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BASENODE_", "CONSUL_"))}
    env["BASENODE_CONFIG"] = os.devnull
    return env


def basenode_run(*command: str, options: List[str] = ()) -> List[str]:
    if not ZIPAPP.exists():
        pytest.fail(f"{ZIPAPP} is missing; run `make zipapp`", pytrace=False)
    argv = [sys.executable, str(ZIPAPP), "run", "--no-consul", "--no-haproxy"]
    argv += ["--status-addr", f"127.0.0.1:{free_port()}", *options]
    return [*argv, "--", *command]


@pytest.fixture
def terminal() -> Iterator:
    opened: List[Terminal] = []

    def start(*command: str, options: List[str] = ()) -> Terminal:
        term = Terminal(basenode_run(*command, options=list(options)), env=_env())
        opened.append(term)
        return term

    yield start
    for term in opened:
        term.close()


WHERE_AM_I = """
import os
print("tty", os.isatty(0), os.isatty(1), os.isatty(2), flush=True)
print("foreground", os.tcgetpgrp(0) == os.getpgrp(), flush=True)
print("own group", os.getpgrp() == os.getpid(), os.getpgrp() != os.getpgid(os.getppid()), flush=True)
print("same session", os.getsid(0) == os.getsid(os.getppid()), flush=True)
"""


def test_on_a_terminal_the_application_has_it_on_all_three_fds_and_is_its_foreground_group(
    terminal, tmp_path: Path
):
    config = tmp_path / "basenode.toml"
    config.write_text(
        "[programs.side]\n"
        "command = ['sh', '-c', 'readlink /proc/self/fd/0; test -t 1 || echo side-out-not-a-tty']\n"
        "startsecs = 0\n"
    )
    term = terminal(sys.executable, "-c", WHERE_AM_I, options=["--config", str(config)])
    assert term.wait() == 0, term.text()
    screen = term.text()
    assert "\ntty True True True\n" in "\n" + screen, screen
    assert "foreground True\n" in screen
    assert "own group True True\n" in screen
    assert "same session True\n" in screen
    # Not the application: stdin on /dev/null, output through basenode's pipes, prefixed.
    assert "side | /dev/null\n" in screen
    assert "side | side-out-not-a-tty\n" in screen


TRAPS_INT = """
import signal, sys
# Markers split in the source, so that basenode's log of the command line does not show them.
signal.signal(signal.SIGINT, lambda *_: print("got" "-INT", flush=True))
print("app" "-ready", flush=True)
while True:
    line = sys.stdin.readline()
    if not line:
        sys.exit(4)
    print("read", line.strip(), flush=True)
"""


def test_ctrl_c_reaches_an_application_that_traps_it_and_it_keeps_running(terminal):
    term = terminal(sys.executable, "-c", TRAPS_INT)
    term.wait_for("app-ready")
    term.write(b"\x03")
    term.wait_for("got-INT")
    term.write(b"still-here\n")  # it reads the terminal, in the foreground, after the Ctrl-C
    term.wait_for("read still-here")
    assert term.proc.poll() is None
    term.write(b"\x04")  # Ctrl-D: end of input; it exits 4, and basenode with it
    assert term.wait() == 4, term.text()
    assert "stopping: got SIGINT" not in term.text()  # basenode itself never saw the Ctrl-C


def test_ctrl_c_ends_an_application_that_does_not_trap_it_and_basenode_exits_with_its_status(terminal):
    term = terminal("sh", "-c", "echo app-rea''dy; exec sleep 100")
    term.wait_for("app-ready")
    term.write(b"\x03")
    assert term.wait() == 128 + signal.SIGINT, term.text()
    assert "app: killed by SIGINT" in term.text()


def test_a_shell_as_the_application_runs_an_interactive_command_and_exits_with_its_status(terminal):
    term = terminal("sh", "-i")
    term.write(b"echo shell-$((6 * 7))\n")
    term.wait_for("shell-42")
    # `head` reads the terminal: it must be the foreground job (in the background it would be
    # stopped by SIGTTIN and print nothing), which the shell can make it only from the foreground.
    term.write(b"head -n 1\n")
    term.write(b"typed-line\n")
    term.write(b'echo "head said $?"\n')
    term.wait_for("head said 0")
    assert term.text().count("typed-line\n") >= 2, term.text()  # the terminal's echo, then head's
    term.write(b"exit 7\n")
    assert term.wait() == 7, term.text()


JSON_LINE = b'{"level":"info","msg":"caf\xc3\xa9 \\u00e9","n":1}\n'


def _run_piped(*options: str) -> subprocess.CompletedProcess:
    script = "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())"
    return subprocess.run(
        basenode_run(sys.executable, "-c", script, options=list(options)),
        cwd=ROOT,
        env=_env(),
        input=JSON_LINE,
        capture_output=True,
        timeout=60,
    )


def test_with_stdout_a_pipe_a_json_line_from_the_application_reaches_stdout_byte_for_byte():
    out = _run_piped()
    assert out.returncode == 0, out.stderr
    assert out.stdout == JSON_LINE  # and the application read basenode's stdin
    json.loads(out.stdout)


def test_app_output_prefix_keeps_the_prefixed_lines_and_json_the_wrapped_ones():
    out = _run_piped("--app-output", "prefix")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"app | " + JSON_LINE
    out = _run_piped("--app-output", "json")
    assert out.returncode == 0, out.stderr
    entry = json.loads(out.stdout)
    assert entry["component"] == "app" and entry["fields"] == {"program": "app", "stream": "stdout"}
    assert entry["message"] == JSON_LINE.decode().rstrip("\n")


SIGNALS_ON_TERMINAL = """
import os, signal, sys
signal.signal(signal.SIGHUP, lambda *_: print("got" "-HUP", flush=True))
def on_term(*_):
    print("got" "-TERM", flush=True)
    sys.exit(3)
signal.signal(signal.SIGTERM, on_term)
print("app" "-pid", os.getpid(), flush=True)
while True:
    signal.pause()
"""


def test_on_a_terminal_signals_to_basenode_still_reach_the_application_and_the_terminal_comes_back(
    terminal, tmp_path: Path
):
    config = tmp_path / "basenode.toml"
    # Slow to stop: the terminal's foreground can be looked at after the application has exited.
    side = 'trap "sleep 3; exit 0" TERM; echo side-"up"; while :; do sleep 0.1; done'
    config.write_text(f"[programs.side]\ncommand = ['sh', '-c', '{side}']\nstartsecs = 0\n")
    term = terminal(sys.executable, "-c", SIGNALS_ON_TERMINAL, options=["--config", str(config)])
    screen = term.wait_for("app-pid ")
    term.wait_for("side-up")
    app_pid = int(screen.split("app-pid ", 1)[1].split()[0])
    basenode = term.proc.pid  # setsid -c exec'd it: the session leader, its own group
    assert os.tcgetpgrp(term.master) == app_pid  # the application's group is the foreground

    os.kill(basenode, signal.SIGHUP)  # forwarded to the application's pid, as before
    term.wait_for("got-HUP")
    os.kill(basenode, signal.SIGTERM)  # the stop: the application first, then side (3 s)
    term.wait_for("got-TERM")
    eventually(lambda: os.tcgetpgrp(term.master) == basenode, timeout=10, what="the foreground back")
    assert term.wait() == 3, term.text()  # the application's own status
