"""`[programs.NAME]` (any other program to supervise) and `[app]` (the application COMMAND's
readiness): each key read and checked, and `depends_on` checked across programs."""

from __future__ import annotations

import os
import signal
from typing import Any, Mapping, Optional, Sequence, Tuple

from .. import childenv
from .errors import ConfigError, show
from .file import FileValues, Table
from .layers import Environ
from .model import AUTORESTART, PROGRAM_NAME_RE, App, Program
from .values import account_problem, check_bind, http_target, parse_port, resolve_command, split_host_port
from .values import text as _text
from .values import text_list as _text_list


def program_from_table(
    file: Optional[FileValues], name: str, values: Mapping[str, Any], environ: Environ
) -> Program:
    t = Table(file, f"programs.{name}", values)
    if not PROGRAM_NAME_RE.match(name):
        raise t.fail("", f"program name must match [A-Za-z0-9_-]{{1,64}}, got {show(name)}")
    command = t.get("command", "text_list")
    if not command:
        raise t.fail("command", "required: the program's command as a list of strings")
    environment = t.get("environment", "environment", ())
    path = dict(environment).get("PATH", environ.get("PATH"))
    if resolve_command(command[0], path) is None:
        raise t.fail("command", f"command {show(command[0])} not found")
    directory = t.get("directory", "text")
    if directory is not None and not os.path.isdir(directory):
        raise t.fail("directory", f"no such directory {show(directory)}")
    user = t.get("user", "text")
    group = t.get("group", "text")
    for key, value in (("user", user), ("group", group)):
        problem = account_problem(key, value)
        if problem:
            raise t.fail(key, problem)
    pass_env = pass_env_names(t, "pass_env")
    autorestart = t.get("autorestart", "text", "on-failure")
    if autorestart not in AUTORESTART:
        raise t.fail("autorestart", f"expected always, on-failure or never, got {show(autorestart)}")
    program = Program(
        name=name,
        command=command,
        environment=environment,
        directory=directory,
        user=user,
        autorestart=autorestart,
        startsecs=t.get("startsecs", "seconds", 1.0),
        startretries=t.get("startretries", "count", 3),
        backoff_initial=t.get("backoff_initial", "seconds", 0.5),
        backoff_max=t.get("backoff_max", "seconds", 30.0),
        stop_signal=t.get("stop_signal", "signal", signal.SIGTERM),
        stop_timeout=t.get("stop_timeout", "seconds", 10.0),
        depends_on=t.get("depends_on", "text_list", ()),
        required=t.get("required", "flag", False),
        forward_signals=t.get("forward_signals", "signal_list", ()),
        **_readiness(t, environ),
        group=group,
        pass_env=pass_env,
    )
    t.check_unknown()
    return program


def check_programs(programs: Sequence[Program], known: Sequence[str], sources: Mapping[str, str]) -> None:
    """depends_on must name existing programs and contain no cycle."""
    names = set(known) | {p.name for p in programs}
    deps = {p.name: p.depends_on for p in programs}
    for p in programs:
        for d in p.depends_on:
            if d not in names:
                raise ConfigError(
                    sources.get(p.name, ""), f"programs.{p.name}.depends_on", f"unknown program {show(d)}"
                )
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*trail[trail.index(name) :], name]
            first = cycle[0]
            raise ConfigError(
                sources.get(first, ""),
                f"programs.{first}.depends_on",
                "dependency cycle: " + " -> ".join(cycle),
            )
        state[name] = 1
        for d in deps.get(name, ()):
            visit(d, [*trail, name])
        state[name] = 2

    for p in programs:
        visit(p.name, [])


READY_KEYS = ("ready_file", "ready_tcp", "ready_http", "ready_command")
# Readiness of the application from the environment (a Dockerfile's ENV), over its [app] keys.
APP_READY_VARIABLES = {
    "ready_tcp": "BASENODE_APP_READY_TCP",
    "ready_http": "BASENODE_APP_READY_HTTP",
    "ready_file": "BASENODE_APP_READY_FILE",
}


def _ready_address(value: Any) -> Tuple[str, int]:
    """ready_tcp: a port (on 127.0.0.1), or "address:port" with an IP address or localhost."""
    if isinstance(value, str) and ":" in value:
        host, port = split_host_port(value)
        host = "127.0.0.1" if host == "localhost" else host
        return check_bind(host), port
    return "127.0.0.1", parse_port(value)


def _readiness(t: Table, environ: Environ, variables: Optional[Mapping[str, str]] = None) -> dict:
    """The ready_* keys of a program's table: at most one. `variables` (the application's): when
    any of them is set, they replace the table's keys."""
    values: dict = {}
    sources: dict = {}
    for key in READY_KEYS:
        t.used.add(key)
        variable = (variables or {}).get(key)
        if variable and environ.get(variable):
            values[key], sources[key] = environ[variable], variable
    if not values:
        for key in READY_KEYS:
            if key in t.values:
                values[key], sources[key] = t.values[key], t.source(key)
    if len(values) > 1:
        first, second = list(values)[:2]
        message = f"only one of {', '.join(READY_KEYS)} (also {first})"
        raise ConfigError(sources[second], t.key(second), message)
    fields: dict = {}
    for key, value in values.items():
        problem = None
        try:
            if key == "ready_tcp":
                fields[key] = _ready_address(value)
            elif key == "ready_http":
                http_target(_text(value))
                fields[key] = value
            elif key == "ready_command":
                fields[key] = _text_list(value)
                if not fields[key]:
                    problem = "expected a command: a non-empty list of strings"
                elif resolve_command(fields[key][0], environ.get("PATH")) is None:
                    problem = f"command {show(fields[key][0])} not found"
            else:
                fields[key] = _text(value)
        except (TypeError, ValueError) as e:
            problem = str(e) or f"expected {_READY_EXPECT[key]}, got {show(value)}"
        if problem:
            raise ConfigError(sources[key], t.key(key), problem)
    return fields


_READY_EXPECT = {
    "ready_file": "a path",
    "ready_tcp": "a port or address:port",
    "ready_http": "an http:// URL",
    "ready_command": "a list of strings",
}


def load_app(file: Optional[FileValues], values: Mapping[str, Any], environ: Environ) -> App:
    """[app]: the application's startsecs and readiness (BASENODE_APP_READY_* win over the file)."""
    t = Table(file, "app", values)
    app = App(
        startsecs=t.get("startsecs", "seconds", 0.0),
        **_readiness(t, environ, APP_READY_VARIABLES),
    )
    t.check_unknown()
    return app


def pass_env_names(t: Table, key: str) -> Tuple[str, ...]:
    names = t.get(key, "text_list", ())
    try:
        childenv.check_names(names)
    except ValueError as e:
        raise t.fail(key, str(e)) from None
    return names
