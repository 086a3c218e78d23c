"""A program's process: started in its own session (or the terminal's foreground), as its user, with
its environment; signals to its pid or its process groups; SIGKILL to what is left of it."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from typing import Dict, List, Optional, Tuple

from .. import childenv, config, terminal
from .process import Proc

log = logging.getLogger(__package__)  # one component, "supervise", for the whole supervisor


class StartFailed(Exception):
    """The program could not be started: `error` as raised, `why` for the log."""

    def __init__(self, error: Exception, why: str) -> None:
        super().__init__(why)
        self.error = error
        self.why = why


def user_args(user: Optional[str], group: Optional[str] = None) -> Tuple[dict, Dict[str, str]]:
    """Popen arguments to run as `user` (name or uid) with its groups (`group`, when given, as the
    primary one), and the HOME/USER/LOGNAME it gets (as gosu and su-exec set them). KeyError when
    the user or group does not exist."""
    if not user and not group:
        return {}, {}
    import grp  # only when a program asks for a user
    import pwd

    gid = None
    if group:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    if not user:
        return ({} if os.getegid() == gid else {"group": gid, "extra_groups": [gid]}), {}
    pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    gid = pw.pw_gid if gid is None else gid
    env = {"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name}
    if os.geteuid() == pw.pw_uid and os.getegid() == gid:
        return {}, env  # already that user; a non-root basenode could not call setgroups anyway
    groups = os.getgrouplist(pw.pw_name, gid)
    return {"user": pw.pw_uid, "group": gid, "extra_groups": groups}, env


def start(prog: config.Program, has_terminal: bool) -> Tuple[subprocess.Popen, Optional[Tuple[int, int]]]:
    """Start one run of `prog`: its Popen, and the read ends of its stdout and stderr pipes (None
    when its output is `inherit`). `has_terminal`: basenode holds its stdin's terminal (see
    terminal.py). StartFailed when it cannot be started."""
    fds: List[int] = []
    try:
        kwargs, user_env = user_args(prog.user, prog.group)
        env = childenv.inherited(os.environ, prog.pass_env)  # no secrets unless it asks
        env.update(user_env)
        env.update(dict(prog.environment))
        inherit = prog.output == "inherit"
        if not inherit:
            out_r, out_w = os.pipe()
            fds += [out_r, out_w]
            err_r, err_w = os.pipe()
            fds += [err_r, err_w]
        # The terminal's foreground for the application: its own group in our session (see
        # terminal.py). Every child of a basenode that ignores SIGTTOU/SIGTTIN resets them.
        foreground = has_terminal and prog.main and inherit
        preexec = None
        if foreground:
            preexec = terminal.take_foreground
        elif has_terminal:
            preexec = terminal.child_defaults
        popen = subprocess.Popen(
            prog.command,
            stdin=None if prog.main else subprocess.DEVNULL,
            stdout=None if inherit else out_w,
            stderr=None if inherit else err_w,
            env=env,
            cwd=prog.directory,
            start_new_session=not foreground,  # own session and group: see the package docstring
            preexec_fn=preexec,
            restore_signals=True,
            close_fds=True,
            **kwargs,
        )
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as e:
        for fd in fds:
            os.close(fd)
        why = f"user {prog.user!r} or group {prog.group!r} not found" if isinstance(e, KeyError) else str(e)
        raise StartFailed(e, why) from e
    if inherit:
        return popen, None
    os.close(out_w)
    os.close(err_w)
    return popen, (out_r, err_r)


def send(pid: int, sig: int, group: bool = False) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as e:
        log.warning("cannot send signal %d to %s %d: %s", sig, "group" if group else "pid", pid, e)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill(p: Proc) -> None:
    """SIGKILL to the program's pid and every process group of its runs."""
    if p.pid is not None and p.pid not in p.groups:
        send(p.pid, signal.SIGKILL)
    for g in p.groups:
        send(g, signal.SIGKILL, group=True)
    if not p.kill_logged and (p.pid is not None or p.groups):
        p.kill_logged = True
        log.warning("%s: did not stop within its stop timeout: SIGKILL", p.program.name)
