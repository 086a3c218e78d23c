"""`load`: every layer and section into one frozen Settings; ConfigError on the first bad value."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from . import kinds
from .consul import load_agent, load_consul_http
from .errors import ConfigError, show
from .file import Table, Tables, check_trusted, read_file
from .layers import Environ, resolve
from .model import APP_PROGRAM, Settings
from .options import BY_NAME, OPTIONS
from .programs import check_programs, load_app, program_from_table
from .routes import load_routes
from .services import load_services
from .templates import check_destinations, load_templates
from .values import resolve_command
from .watch import load_watch


def load(flags: Any, environ: Environ) -> Settings:
    """Build the Settings from every layer: flag > environment > file > default."""
    config_path, config_source = resolve(BY_NAME["config"], flags, environ, None)
    file = read_file(Path(config_path), explicit=config_source != "default", source=config_source)
    if file is not None:
        check_trusted(file.path, "config file", config_source, "")
    tables = Tables(file)
    options: Dict[str, Any] = {}
    sources: Dict[str, str] = {}
    for option in OPTIONS:
        if option.name != "config" and option.kind is not kinds.SECTION:
            options[option.name], sources[option.name] = resolve(option, flags, environ, tables)

    template = options["template"]
    if template is not None:
        if not os.path.isfile(template):
            raise ConfigError(sources["template"], "template", f"no such file {show(template)}")
        check_trusted(Path(template), "template", sources["template"], "template")
    routes = load_routes(flags, environ, tables)
    run_consul, run_haproxy = not options["no_consul"], not options["no_haproxy"]
    agent = load_agent(environ, tables)
    haproxy_user, haproxy_group = _haproxy_user(tables.section("haproxy"))
    tables.section("consul").check_unknown()
    tables.section("haproxy").check_unknown()
    watch = load_watch(options, tables)
    tables.section("watch").check_unknown()
    services = load_services(environ, tables)
    programs = tuple(
        program_from_table(
            file, name, values if isinstance(values, Mapping) else {"command": values}, environ
        )
        for name, values in tables.top.table("programs").items()
    )
    plugins_dir = Path(options["plugins_dir"])
    app = load_app(file, tables.top.table("app"), environ)
    supervised = [p.name for p in programs] + [APP_PROGRAM]
    template_specs = options["template_specs"] or ()
    templates = load_templates(template_specs, file, tables.top.table("templates"), plugins_dir, supervised)
    state_dir = Path(options["state_dir"])
    check_destinations(templates, state_dir / "haproxy.cfg" if run_haproxy else None)
    tables.top.check_unknown()

    run_sync = run_haproxy or bool(templates)
    builtin = [n for n, on in (("consul", run_consul), ("haproxy", run_haproxy), ("sync", run_sync)) if on]
    if flags.command:
        builtin.append(APP_PROGRAM)
    clash = [p.name for p in programs if p.name in builtin]
    if clash:
        raise ConfigError(
            file.source(f"programs.{clash[0]}") if file else "",
            f"programs.{clash[0]}",
            "name is reserved for a built-in program",
        )
    check_programs(
        programs,
        builtin,
        {p.name: file.source(f"programs.{p.name}.depends_on") for p in programs} if file else {},
    )
    for name, needed in (("consul", run_consul), ("haproxy", run_haproxy)):
        binary = options[f"{name}_bin"]
        if needed and resolve_command(binary, environ.get("PATH")) is None:
            raise ConfigError(
                sources[f"{name}_bin"],
                BY_NAME[f"{name}_bin"].key or "",
                f"{name} binary {show(binary)} not found (or use --no-{name})",
            )
    if flags.command and resolve_command(flags.command[0], environ.get("PATH")) is None:
        raise ConfigError("COMMAND", "", f"command {show(flags.command[0])} not found")

    return Settings(
        config_file=file.path if file else None,
        state_dir=state_dir,
        routes=routes,
        bind=options["bind"],
        template=Path(template) if template else None,
        run_consul=run_consul,
        run_haproxy=run_haproxy,
        consul_bin=options["consul_bin"],
        haproxy_bin=options["haproxy_bin"],
        haproxy_user=haproxy_user,
        haproxy_group=haproxy_group,
        haproxy_log=options["haproxy_log"],
        status_addr=options["status_addr"],
        kv_route_ports=options["kv_route_ports"],
        kv_route_limit=options["kv_route_limit"],
        log_format=options["log_format"],
        log_level=options["log_level"],
        consul_http=load_consul_http(environ),
        agent=agent,
        watch=watch,
        programs=programs,
        command=tuple(flags.command),
        services=services,
        drain=options["drain"],
        drain_quiet=options["drain_quiet"],
        health_max_age=options["health_max_age"],
        templates=templates,
        plugins_dir=plugins_dir,
        app_output=options["app_output"],
        app=app,
        app_user=options["app_user"],
        app_group=options["app_group"],
        app_pass_env=options["app_pass_env"] or (),
        template_env=options["template_env"] or (),
    )


def _haproxy_user(t: Table) -> Tuple[Optional[str], Optional[str]]:
    """[haproxy] user: explicit (must exist), "" for none, else `haproxy` when root and it exists."""
    import grp
    import pwd

    name = t.get("user", "text")
    if name == "" or (name is None and os.geteuid() != 0):
        return None, None
    try:
        entry = pwd.getpwnam(name or "haproxy")
    except KeyError:
        if name is None:
            return None, None
        raise t.fail("user", f"no such user {show(name)}") from None
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        group = None
    return entry.pw_name, group
