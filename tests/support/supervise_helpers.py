"""Run basenode.supervise in a child process, so that its signals, reaping and exit status are real.

As a module (`python -m tests.support.supervise_helpers SPEC STATES`) it is the harness: it reads
the programs from the JSON file SPEC, runs Supervisor.run() in its main thread, records what its
callbacks see in events.jsonl beside STATES, writes the final ProgramState of every program to the
JSON file STATES and exits with the status run() returned.
Imported, it gives tests `start()` and the `Run` handle. Only the standard library at import time.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent.parent

LOG_FORMAT = "basenode %(levelname)s: %(message)s"


def program(name: str, *command: str, **fields: Any) -> Dict[str, Any]:
    """A program for the spec: config.Program's fields, signals by name ("TERM"), lists for tuples."""
    return {"name": name, "command": list(command), **fields}


class Run:
    """A running harness: its output files, its exit status, the final program states."""

    def __init__(self, proc: subprocess.Popen, directory: Path) -> None:
        self.proc = proc
        self.directory = directory

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout(self) -> str:
        return (self.directory / "stdout").read_bytes().decode(errors="replace")

    def stderr(self) -> str:
        return (self.directory / "stderr").read_bytes().decode(errors="replace")

    def stdout_bytes(self) -> bytes:
        return (self.directory / "stdout").read_bytes()

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        """Exit status; on timeout the harness is killed and the test fails with its log."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(
                f"harness still running after {timeout}s; stderr:\n{self.stderr()}"
            ) from None

    def states(self) -> Dict[str, Dict[str, Any]]:
        """ProgramState fields by program name, as run() left them."""
        return {s["name"]: s for s in json.loads((self.directory / "states.json").read_text())}

    def events(self) -> List[Dict[str, Any]]:
        """What the callbacks saw, in order: {"started": name} and {"states": {name: state}}."""
        path = self.directory / "events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def kill(self) -> None:
        """Teardown: a graceful stop first, so that the programs it runs do not outlive the test."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start(
    directory: Path,
    programs: List[Dict[str, Any]],
    *,
    block_signals: Optional[List[str]] = None,
    shell_prefix: str = "",
) -> Run:
    """Start the harness supervising `programs`. Output goes to files in `directory`.

    block_signals: signal names the harness blocks before running, as if it had inherited that
    mask. shell_prefix: shell code run before exec'ing the harness (e.g. `trap "" INT;` so that it
    inherits an ignored SIGINT, as a backgrounded process does)."""
    directory.mkdir(parents=True, exist_ok=True)
    spec = directory / "spec.json"
    spec.write_text(json.dumps({"programs": programs, "block_signals": block_signals or []}))
    argv = [
        sys.executable,
        "-m",
        "tests.support.supervise_helpers",
        str(spec),
        str(directory / "states.json"),
    ]
    if shell_prefix:
        argv = ["sh", "-c", shell_prefix + ' exec "$@"', "sh", *argv]
    with open(directory / "stdout", "wb") as out, open(directory / "stderr", "wb") as err:
        proc = subprocess.Popen(
            argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
        )
    return Run(proc, directory)


def pid_alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before open, or between open and read
        return False


def wait_for_text(read, text: str, timeout: float = 20.0) -> str:
    """Poll read() until it contains text; returns what was read."""
    deadline = time.monotonic() + timeout
    while True:
        got = read()
        if text in got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {text!r}; got:\n{got}")
        time.sleep(0.02)


def _program_from(entry: Dict[str, Any]):
    from basenode import config

    fields = dict(entry)
    fields["command"] = tuple(fields["command"])
    fields["environment"] = tuple(tuple(kv) for kv in fields.get("environment", {}).items())
    fields["depends_on"] = tuple(fields.get("depends_on", ()))
    fields["forward_signals"] = tuple(config.signal_number(s) for s in fields.get("forward_signals", ()))
    fields["ready_command"] = tuple(fields.get("ready_command", ()))
    if fields.get("ready_tcp") is not None:
        fields["ready_tcp"] = tuple(fields["ready_tcp"])
    if "stop_signal" in fields:
        fields["stop_signal"] = config.signal_number(fields["stop_signal"])
    return config.Program(**fields)


def main(argv: List[str]) -> int:
    from basenode import config, supervise

    spec = json.loads(Path(argv[1]).read_text())
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG, format=LOG_FORMAT)
    programs = [_program_from(entry) for entry in spec["programs"]]
    blocked = [config.signal_number(s) for s in spec.get("block_signals", [])]
    if blocked:
        signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    with open(Path(argv[2]).with_name("events.jsonl"), "w") as events:

        def record(event: Dict[str, Any]) -> None:
            events.write(json.dumps(event) + "\n")
            events.flush()

        supervisor = supervise.Supervisor(
            programs,
            on_started=lambda name: record({"started": name}),
            on_change=lambda states: record({"states": {s.name: s.state for s in states}}),
        )
        status = supervisor.run()
    Path(argv[2]).write_text(json.dumps([asdict(s) for s in supervisor.states()]))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
