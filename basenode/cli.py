"""Command line: argparse subcommands wiring the modules together; no logic of its own.

Heavy modules (jinja2, py-consul) are imported inside the commands that need them, so that
`basenode run` as PID 1 and `basenode version` stay small and start fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
from typing import Callable, List, Optional, Sequence

from . import __version__, config, log, topology

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
    from . import control, reload, supervise

    child_options = flags_to_argv(flags)
    sighup = reload.Reload(settings, flags, child_options)
    supervisor = supervise.Supervisor(
        topology.all_programs(settings, child_options, first_start=True),
        on_reload=lambda: sighup.apply(supervisor),
        json_output=settings.log_format == "json",
    )
    server = None
    try:
        topology.prepare_state_dir(settings.state_dir)  # a state dir not ours: ConfigError, nothing started
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


def cmd_sync(settings: config.Settings, args: argparse.Namespace, flags: config.Flags) -> int:
    from . import sync

    topology.prepare_state_dir(settings.state_dir)
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
    from .status import commands

    return commands.status_command(settings, as_json=args.json)


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
    from .status import commands

    return commands.health_command(settings)


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
