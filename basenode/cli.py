"""Command line: argparse subcommands wiring the modules together; no logic of its own.

Heavy modules (jinja2, py-consul) are imported inside the commands that need them, so that
`basenode run` as PID 1 and `basenode version` stay small and start fast.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Set, Tuple

from . import __version__, childenv, config, log

logger = logging.getLogger(__name__)

BUNDLED = (
    "py-consul",
    "requests",
    "urllib3",
    "certifi",
    "idna",
    "jinja2",
    "markupsafe",
    "tomli",
    "prometheus-client",
)


def _common_options(parser: argparse.ArgumentParser) -> None:
    """Every command takes the options of the table (config/options.py)."""
    config.add_options(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="basenode",
        description="PID 1 for containers that need service discovery.",
    )
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND")
    sub.required = True

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common_options(p)
        return p

    run = command("run", "run as the container's entrypoint: supervise Consul, HAProxy, sync and COMMAND")
    # `basenode run -- COMMAND` is the contract; a Dockerfile's CMD appended to ENTRYPOINT
    # ["basenode", "run"] comes without the `--`, so a bare COMMAND is taken too.
    run.add_argument("app_command", nargs=argparse.REMAINDER, metavar="COMMAND", help=argparse.SUPPRESS)
    join = command("join", "join the local Consul agent to the cluster")
    join.add_argument("addresses", nargs="*", metavar="ADDRESS")
    join.add_argument(
        "--timeout", type=float, default=60.0, help="give up after this many seconds (default 60)"
    )
    sync = command("sync", "the watch -> render -> apply loop alone")
    sync.add_argument("--once", action="store_true", help="render and apply once, then exit")
    render = command("render", "render once from the live catalog and apply nothing")
    render.add_argument(
        "--out", metavar="FILE", default="-", help="where to write (default -, standard output)"
    )
    command("check", "validate config and template (haproxy -c on the result)")
    status = command("status", "what a running basenode is doing")
    status.add_argument("--json", action="store_true")
    command("health", "exit 0 when healthy, 1 otherwise")
    explain = command("explain", "why each instance of SERVICE gets traffic from this node, or not")
    explain.add_argument("service", metavar="SERVICE")
    explain.add_argument("--json", action="store_true", help="the document /explain?service= serves")
    register = command("register", "keep the app's services registered; on SIGTERM deregister, then drain")
    # Set by `run` when it runs the agent: on stop the agent leaves the cluster during the drain.
    register.add_argument("--leave", action="store_true", help=argparse.SUPPRESS)
    command("version", "versions of basenode and its bundled packages")
    return parser


def split_command(argv: Sequence[str]) -> tuple[List[str], List[str]]:
    """Everything after the first `--` is the application COMMAND, never parsed as options."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def flags_from(args: argparse.Namespace, command: Sequence[str]) -> config.Flags:
    return config.flags_from(args, command)


def flags_to_argv(flags: config.Flags) -> List[str]:
    """The options that reproduce `flags`, for the sync loop that `run` starts as a child."""
    return config.flags_to_argv(flags)


def self_command() -> List[str]:
    """How to start this same basenode again (zipapp, console script or `python -m basenode`)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name == "basenode.__main__":
        return [sys.executable, "-m", "basenode"]
    return [sys.executable, os.path.abspath(sys.argv[0])]


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `docker run IMAGE version` arrives as `basenode run version` (ENTRYPOINT ["basenode", "run"]):
    # one of basenode's own command names right after `run` is that command, not an application.
    if len(argv) >= 2 and argv[0] == "run" and argv[1] in OWN_COMMANDS:
        argv = argv[1:]
    own, command = split_command(argv)
    parser = build_parser()
    args = parser.parse_args(own)
    bare = getattr(args, "app_command", None) or []
    if bare:
        command = [*bare, "--", *command] if command else bare
    if command and args.command_name != "run":
        parser.error("COMMAND after -- is only for `basenode run`")
    if args.command_name == "version":
        return _quiet_on_closed_pipe(cmd_version)
    flags = flags_from(args, command)
    if args.command_name in CLIENT_COMMANDS:
        # They only ask a running basenode: whether this shell can find consul or haproxy is beside the point.
        flags = dataclasses.replace(flags, no_consul=True, no_haproxy=True)
    try:
        settings = config.load(flags, os.environ)
    except config.ConfigError as e:
        print(f"basenode: {e}", file=sys.stderr)
        return 2
    log.setup(settings.log_format, settings.log_level)
    handler = COMMANDS[args.command_name]
    try:
        return handler(settings, args, flags)
    except config.ConfigError as e:
        print(f"basenode: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


def _quiet_on_closed_pipe(command: Callable[[], int]) -> int:
    """`basenode version | head -1` is not an error: stop writing, as other CLI tools do."""
    try:
        status = command()
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def cmd_version() -> int:
    import platform

    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover
        metadata = None  # type: ignore[assignment]
    print(f"basenode {__version__}")
    print(f"python {platform.python_version()} ({platform.python_implementation()}, {sys.executable})")
    for name in BUNDLED:
        try:
            version = metadata.version(name) if metadata else "?"
        except Exception:
            continue  # tomli is absent from a dev venv on 3.11+
        print(f"{name} {version}")
    return 0


def cmd_run(settings: config.Settings, args: argparse.Namespace, flags: config.Flags) -> int:
    from . import control, supervise

    current = {"settings": settings}

    def reload() -> Optional[List[config.Program]]:
        """SIGHUP: the config file again; what changed is started, stopped or restarted."""
        old = current["settings"]
        try:
            new = config.load(flags, os.environ)
            programs = all_programs(new, flags, first_start=False)
        except config.ConfigError as e:
            logger.error("reload refused, the running config stays: %s", e)
            return None
        logger.info("SIGHUP: config reloaded from %s", new.config_file or "flags and environment")
        current["settings"] = new
        if new.agent != old.agent and new.run_consul and old.run_consul:
            supervisor.restart_program("consul")
        if new.run_sync and (new != old or not old.run_sync):
            # The sync loop (re)starts: what is added and waits for it waits for its new first renders.
            with contextlib.suppress(FileNotFoundError):
                new.sync_ready_file.unlink()
        if new.run_sync and old.run_sync:
            # It reads the config file itself: a restart picks up every change; otherwise HUP makes it
            # look at its template now.
            with contextlib.suppress(ValueError):  # not running just now: it reads both when it starts
                if new != old:
                    supervisor.restart_program("sync")
                else:
                    supervisor.signal_program("sync", signal.SIGHUP)
        return programs

    supervisor = supervise.Supervisor(
        all_programs(settings, flags, first_start=True),
        on_reload=reload,
        json_output=settings.log_format == "json",
    )
    server = None
    try:
        prepare_state_dir(settings.state_dir)  # a state dir not ours: ConfigError, nothing started
    except OSError as e:
        logger.warning("cannot create the state dir %s: %s", settings.state_dir, e)
    try:
        server = control.ControlServer(supervisor, settings.state_dir)
    except OSError as e:
        logger.warning("no control socket in %s: %s (status shows no programs)", settings.state_dir, e)
    try:
        return supervisor.run()
    finally:
        if server is not None:
            server.close()


def all_programs(settings: config.Settings, flags: config.Flags, first_start: bool) -> List[config.Program]:
    """Built-in programs, [programs.*], the application and the service registration, in start order."""
    reloaded = {name for t in settings.templates for name in (t.reload_program, t.restart_program) if name}
    programs = list(builtin_programs(settings, flags, first_start)) + [
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
        programs.append(register_program(settings, flags))
    return programs


def waits_for_its_files(program: config.Program, reloaded: Set[str]) -> config.Program:
    """A program that a template reloads or restarts (its name in `reloaded`) reads that template's
    file: it starts after the sync loop's first renders (`depends_on` gains "sync"), never on a
    missing or stale file."""
    if program.name not in reloaded or "sync" in program.depends_on:
        return program
    return dataclasses.replace(program, depends_on=(*program.depends_on, "sync"))


def child_command(settings: config.Settings, flags: config.Flags, subcommand: str) -> Tuple[str, ...]:
    """This basenode again, as a child of `run`, with run's options; it talks to run's agent, runs none."""
    argv = flags_to_argv(flags)
    if settings.run_consul and "--no-consul" not in argv:
        argv.append("--no-consul")
    return (*self_command(), subcommand, *argv)


def register_program(settings: config.Settings, flags: config.Flags) -> config.Program:
    """Registers the app's services once it runs; started after the app, so stopped before it."""
    after = ("app",) if settings.command else (("consul",) if settings.run_consul else ())
    return config.Program(
        name="register",
        pass_env=tuple(childenv.SECRET_ENV),  # it talks to Consul as basenode does
        command=(*child_command(settings, flags, "register"), *(["--leave"] if settings.run_consul else [])),
        autorestart="always",
        startsecs=0,
        startretries=1000000,
        backoff_initial=0.5,
        backoff_max=10.0,
        depends_on=after,
        stop_timeout=settings.drain + 5.0,
    )


def builtin_programs(
    settings: config.Settings, flags: config.Flags, first_start: bool = True
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
                command=child_command(settings, flags, "sync"),
                pass_env=tuple(childenv.SECRET_ENV),  # it reads Consul with them
                # Three threads, none allocating much at the same time: glibc's per-thread arenas would
                # only keep fragments of the big renders (measured: ~4 MB at 1,000 routes).
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


def cmd_sync(settings: config.Settings, args: argparse.Namespace, flags: config.Flags) -> int:
    from . import sync

    prepare_state_dir(settings.state_dir)
    return sync.run(settings, once=args.once)


def cmd_render(settings: config.Settings, args: argparse.Namespace, flags: config.Flags) -> int:
    from . import sync

    return sync.render_once(settings, out=args.out)


def cmd_check(settings: config.Settings, args: argparse.Namespace, flags: config.Flags) -> int:
    from . import sync

    return sync.check(settings)


def cmd_join(settings: config.Settings, args: argparse.Namespace, flags: config.Flags) -> int:
    from . import consul

    return consul.join_command(settings, args.addresses, timeout=args.timeout)


def cmd_status(settings: config.Settings, args: argparse.Namespace, flags: config.Flags) -> int:
    from . import status

    return status.status_command(settings, as_json=args.json)


def cmd_register(settings: config.Settings, args: argparse.Namespace, flags: config.Flags) -> int:
    from . import register

    if not settings.services:
        print(
            "basenode: register: no service to register (set SERVICE_NAME and SERVICE_PORT)", file=sys.stderr
        )
        return 2
    return register.run(settings, leave=args.leave)


def cmd_explain(settings: config.Settings, args: argparse.Namespace, flags: config.Flags) -> int:
    from . import explain

    return explain.command(settings, args.service, as_json=args.json)


def cmd_health(settings: config.Settings, args: argparse.Namespace, flags: config.Flags) -> int:
    from . import status

    return status.health_command(settings)


COMMANDS = {
    "run": cmd_run,
    "sync": cmd_sync,
    "render": cmd_render,
    "check": cmd_check,
    "join": cmd_join,
    "status": cmd_status,
    "health": cmd_health,
    "explain": cmd_explain,
    "register": cmd_register,
}

CLIENT_COMMANDS = frozenset({"status", "health", "explain"})

# Names that `basenode run NAME` treats as `basenode NAME` (see main).
OWN_COMMANDS = (frozenset(COMMANDS) - {"run"}) | {"version"}
