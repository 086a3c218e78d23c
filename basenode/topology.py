"""The programs `basenode run` supervises: which ones, in which start order, waiting for which.

The built-in ones (the Consul agent, the sync loop, HAProxy) as the settings ask for them, then
`[programs.*]`, the application COMMAND and the service registration. `child_options` are the
options that reproduce run's own (cli.flags_to_argv): the sync and register children are this
basenode again with them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from pathlib import Path
from typing import List, Sequence, Set, Tuple

from . import childenv, config


def all_programs(
    settings: config.Settings, child_options: Sequence[str], first_start: bool
) -> List[config.Program]:
    """Built-in programs, [programs.*], the application and the service registration, in start order."""
    reloaded = {name for t in settings.templates for name in (t.reload_program, t.restart_program) if name}
    programs = list(builtin_programs(settings, child_options, first_start)) + [
        waits_for_its_files(p, reloaded) if settings.run_sync else p for p in settings.programs
    ]
    if settings.command:
        programs.append(
            config.Program(
                name=config.APP_PROGRAM,
                command=settings.command,
                autorestart="never",
                startsecs=settings.app.startsecs,
                ready_file=settings.app.ready_file,
                ready_tcp=settings.app.ready_tcp,
                ready_http=settings.app.ready_http,
                ready_command=settings.app.ready_command,
                main=True,
                forward_signals=config.FORWARDED_SIGNALS,
                output=settings.app_output,
                # After the first renders (sync), so that its config files are in place.
                depends_on=tuple(p.name for p in programs if p.name in ("consul", "sync", "haproxy")),
                user=settings.app_user,
                group=settings.app_group,
                pass_env=settings.app_pass_env,
            )
        )
    if settings.services:
        programs.append(register_program(settings, child_options))
    return programs


def waits_for_its_files(program: config.Program, reloaded: Set[str]) -> config.Program:
    """A program that a template reloads or restarts (its name in `reloaded`) reads that template's
    file: it starts after the sync loop's first renders (`depends_on` gains "sync"), never on a
    missing or stale file."""
    if program.name not in reloaded or "sync" in program.depends_on:
        return program
    return dataclasses.replace(program, depends_on=(*program.depends_on, "sync"))


def self_command() -> List[str]:
    """How to start this same basenode again (zipapp, console script or `python -m basenode`)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name == "basenode.__main__":
        return [sys.executable, "-m", "basenode"]
    return [sys.executable, os.path.abspath(sys.argv[0])]


def child_command(
    settings: config.Settings, child_options: Sequence[str], subcommand: str
) -> Tuple[str, ...]:
    """This basenode again, as a child of `run`, with run's options; it talks to run's agent, runs none."""
    argv = list(child_options)
    if settings.run_consul and "--no-consul" not in argv:
        argv.append("--no-consul")
    return (*self_command(), subcommand, *argv)


def register_program(settings: config.Settings, child_options: Sequence[str]) -> config.Program:
    """Registers the app's services once it runs; started after the app, so stopped before it."""
    after = ("app",) if settings.command else (("consul",) if settings.run_consul else ())
    leave = ["--leave"] if settings.run_consul else []
    return config.Program(
        name="register",
        pass_env=tuple(childenv.SECRET_ENV),  # it talks to Consul as basenode does
        command=(*child_command(settings, child_options, "register"), *leave),
        autorestart="always",
        startsecs=0,
        startretries=1000000,
        backoff_initial=0.5,
        backoff_max=10.0,
        depends_on=after,
        stop_timeout=settings.drain + 5.0,
    )


def builtin_programs(
    settings: config.Settings, child_options: Sequence[str], first_start: bool = True
) -> List[config.Program]:
    """Consul agent, the sync loop and HAProxy, as the settings ask for them."""
    programs: List[config.Program] = []
    if settings.run_consul or settings.run_sync:
        prepare_state_dir(settings.state_dir)
    if settings.run_sync and first_start:
        # What waits for the sync loop waits for these files (its first renders). Ones left by an
        # earlier run would start HAProxy on routes from who knows when: start from this run's catalog.
        for path in (settings.sync_ready_file, settings.haproxy_cfg):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    if settings.run_consul:
        from . import agent

        agent.write_agent_config(settings)
        programs.append(
            dataclasses.replace(agent.agent_program(settings), pass_env=tuple(childenv.SECRET_ENV))
        )
    if settings.run_sync:
        programs.append(
            config.Program(
                name="sync",
                command=child_command(settings, child_options, "sync"),
                pass_env=tuple(childenv.SECRET_ENV),  # it reads Consul with them
                # Three threads, none allocating much at the same time: glibc's per-thread arenas would
                # only keep fragments of the big renders.
                environment=(("MALLOC_ARENA_MAX", "2"),),
                autorestart="always",
                startsecs=0,  # "up" is its ready_file: the first renders, which HAProxy waits for
                startretries=1000000,
                backoff_initial=0.5,
                backoff_max=10.0,
                depends_on=("consul",) if settings.run_consul else (),
                ready_file=str(settings.sync_ready_file),
                stop_first=True,
                stop_timeout=5.0,
            )
        )
    if settings.run_haproxy:
        from .output import haproxy

        programs.append(haproxy.program(settings, depends_on=("sync",)))
    return programs


def prepare_state_dir(path: Path) -> None:
    """State dir: created 0700 if missing, else ours alone and made 0700 (trust.prepare_private_dir);
    sockets, ready files and rendered configs live here. ConfigError when it is not ours."""
    from . import trust

    try:
        trust.prepare_private_dir(path)
    except trust.UntrustedPath as e:
        raise config.ConfigError("", "", str(e)) from None
