"""Put a rendered text in place for one TemplateSpec: candidate, check, atomic promote, then reload.

1. Nothing happens when the destination already holds exactly this text (no write, no reload).
2. The text goes to a candidate beside the destination (same directory, so the rename is atomic),
   with the spec's mode and owner.
3. `check`, if any, runs on the candidate ({candidate} and {dest} substituted; an argv with no shell,
   or one /bin/sh -c string when shell = true). A failing check removes the candidate: the destination
   is untouched (CheckFailed with the command's output).
4. The candidate is renamed over the destination: readers see the old file or the new one.
5. Then at most one of: reload_command (same rules as check, {candidate} is now the destination);
   reload_program (its signal sent by PID 1, through the control socket in the state dir);
   restart_program (restarted by PID 1). A failure there is ReloadFailed: the new file is in place.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shlex
import signal
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from .. import childenv
from ..config import TemplateSpec
from ..files import promote, write_atomic

COMMAND_TIMEOUT = 60.0
OUTPUT_LIMIT = 2000  # characters of a failing command's output kept for the log


class OutputError(Exception):
    """Something went wrong putting a template's output in place; str() says what."""


class CheckFailed(OutputError):
    """The check rejected the candidate; the destination is as it was."""


class ReloadFailed(OutputError):
    """The new file is in place but its reload action failed."""


def candidate_path(destination: Path) -> Path:
    """Hidden, in the destination's directory, keeping its extension (a check may look at it)."""
    return destination.with_name(f".basenode-candidate.{destination.name}")


def current_text(destination: Path) -> Optional[str]:
    try:
        return destination.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return None


SENSITIVE_MODE = 0o600  # a destination that got KV or env() text, unless its spec says otherwise (issue 12)


def apply(spec: TemplateSpec, text: str, state_dir: Path, sensitive: bool = False) -> str:
    """Put `text` in place for `spec`; "unchanged" or "written". CheckFailed, ReloadFailed, OutputError.
    `sensitive`: the text holds KV or env() values: written 0600 unless the spec gives a mode."""
    try:
        return _apply(spec, text, state_dir, sensitive)
    except (OSError, LookupError) as e:  # a destination that is a directory, an owner that is gone, ...
        raise OutputError(f"{spec.destination}: {type(e).__name__}: {e}") from None


def _apply(spec: TemplateSpec, text: str, state_dir: Path, sensitive: bool) -> str:
    destination = spec.destination
    if current_text(destination) == text:
        return "unchanged"
    candidate = candidate_path(destination)
    try:
        mode = spec.mode if spec.mode_given or not sensitive else SENSITIVE_MODE
        write_atomic(candidate, text, mode=mode, owner=owner_ids(spec))
    except OSError as e:
        raise OutputError(f"cannot write {candidate}: {e.strerror or e}") from None
    try:
        if spec.check:
            run_command(spec.check, spec.shell, candidate, destination, CheckFailed, spec.pass_env)
        promote(candidate, destination)
    except BaseException as e:
        with contextlib.suppress(OSError):
            candidate.unlink()
        if isinstance(e, OSError):
            raise OutputError(f"cannot replace {destination}: {e.strerror or e}") from None
        raise
    reload(spec, state_dir)
    return "written"


def owner_ids(spec: TemplateSpec) -> Optional[Tuple[int, int]]:
    if spec.owner is None:
        return None
    uid = pwd.getpwnam(spec.owner).pw_uid
    gid = grp.getgrnam(spec.group).gr_gid if spec.group else -1
    return uid, gid


def substitute(command: Sequence[str], shell: bool, candidate: Path, destination: Path) -> Sequence[str]:
    """{candidate} and {dest} in each word (shell-quoted inside a /bin/sh -c string)."""
    quote = shlex.quote if shell else str
    replaced = [
        word.replace("{candidate}", quote(str(candidate))).replace("{dest}", quote(str(destination)))
        for word in command
    ]
    return ["/bin/sh", "-c", replaced[0]] if shell else replaced


def run_command(
    command: Sequence[str],
    shell: bool,
    candidate: Path,
    destination: Path,
    error: type = OutputError,
    pass_env: Sequence[str] = (),
) -> None:
    """Run a check or reload command; `error` with its status and output unless it exits 0. It
    inherits basenode's environment without the secrets (but those in `pass_env`)."""
    argv = substitute(command, shell, candidate, destination)
    shown = command[0] if shell else shlex.join(argv)
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=childenv.inherited(os.environ, pass_env),
            timeout=COMMAND_TIMEOUT,
        )
    except FileNotFoundError:
        raise error(f"{shown}: command not found") from None
    except PermissionError as e:
        raise error(f"{shown}: {e.strerror}") from None
    except subprocess.TimeoutExpired:
        raise error(f"{shown}: did not finish within {COMMAND_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        output = done.stdout.decode("utf-8", "replace").strip()[-OUTPUT_LIMIT:]
        raise error(f"{shown}: exit status {done.returncode}" + (f": {output}" if output else ""))


def reload(spec: TemplateSpec, state_dir: Path) -> None:
    """The spec's action after a write (if any); ReloadFailed when it did not happen."""
    if spec.reload_command:
        run_command(
            spec.reload_command, spec.shell, spec.destination, spec.destination, ReloadFailed, spec.pass_env
        )
    elif spec.reload_program:
        name = signal.Signals(spec.reload_signal).name[3:]  # SIGHUP -> HUP
        # A program not running yet (it waits for this file, or backs off) reads the file as it starts.
        message = {"op": "signal", "program": spec.reload_program, "signal": name, "if_running": True}
        _control(state_dir, message)
    elif spec.restart_program:
        _control(state_dir, {"op": "restart", "program": spec.restart_program})


def _control(state_dir: Path, message: Dict[str, Any]) -> None:
    """Ask PID 1 (basenode run) through its control socket; ReloadFailed with why it did not happen."""
    from .. import control

    try:
        control.checked(state_dir, message)
    except control.ControlError as e:
        raise ReloadFailed(f"{message['op']} {message['program']}: {e}") from None
