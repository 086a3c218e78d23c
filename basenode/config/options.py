"""The option table: every setting that a flag, a variable and a file key can give, in one place.

From this table come the command line's options (commandline.py), the precedence (layers.py), the sync
child's argv and the README's options table. Adding an option is one entry here plus its use in load."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, make_dataclass
from typing import Optional, Tuple

from . import kinds
from .kinds import Kind
from .model import (
    APP_OUTPUTS,
    DEFAULT_CONFIG,
    DEFAULT_DRAIN_QUIET,
    DEFAULT_HEALTH_MAX_AGE,
    DEFAULT_KV_ROUTE_LIMIT,
    DEFAULT_KV_ROUTE_PORTS,
    DEFAULT_MAX_CONNS,
    DEFAULT_PLUGINS_DIR,
    DEFAULT_STATE_DIR,
    DEFAULT_STATUS_ADDR,
    MAX_CONNS_LIMIT,
    Settings,
    Watch,
)


@dataclass(frozen=True)
class Option:
    name: str  # the field of Flags, and the argparse dest
    flag: Optional[str]  # "--bind"
    variable: Optional[str]  # "BASENODE_BIND"
    key: Optional[str]  # the file key; dotted for a [section]: "watch.max_conns"
    kind: Kind
    default: Optional[str]  # as a user would write it, read like a variable; None: unset
    doc: str  # what it means, for the README (markdown)
    help: str  # the same for --help, as plain text
    metavar: Optional[str] = None
    default_doc: str = ""  # the README's default when not `default` itself

    @property
    def form(self) -> str:
        """`--bind ADDR`, `--log-format text|json`, `--no-consul`: the flag as the README shows it."""
        if self.flag is None or self.kind.action == "store_true":
            return self.flag or ""
        shown = "|".join(self.kind.choices) if self.kind.choices else self.metavar
        return f"{self.flag} {shown}" if shown else self.flag


def _plain(markdown: str) -> str:
    """`code` and [links](#anchor) as plain text."""
    return re.sub(r"\[([^]]*)\]\([^)]*\)", r"\1", markdown).replace("`", "").replace("\\|", "|")


def _option(name: str, kind: Kind, default: Optional[str], doc: str, **more: str) -> Option:
    """The usual names: `--state-dir`, `BASENODE_STATE_DIR`, file key `state_dir` (`key=` for another);
    the help is the doc as plain text (`help=` for a shorter one)."""
    return Option(
        name=name,
        flag=more.pop("flag", "--" + name.replace("_", "-")),
        variable=more.pop("variable", "BASENODE_" + name.upper()),
        key=more.pop("key", name),
        kind=kind,
        default=default,
        doc=doc,
        help=more.pop("help", _plain(doc)),
        **more,
    )


def _seconds(value: float) -> str:
    return f"{value:g}"  # 600.0 -> "600", as the README and a user write it


# Defaults come from the settings' own (model.py), written as a user would give them.
OPTIONS: Tuple[Option, ...] = (
    _option(
        "config",
        kinds.TEXT,
        str(DEFAULT_CONFIG),
        "TOML config file; a missing default file is fine",
        key=None,
        metavar="FILE",
    ),
    _option(
        "state_dir",
        kinds.TEXT,
        str(DEFAULT_STATE_DIR),
        "rendered config, sockets, state; made 0700; refused when a symlink or another user's",
        metavar="DIR",
    ),
    _option(
        "routes",
        kinds.SECTION,
        None,
        "`service:port[/mode][;option=value...][,...]`, mode `tcp` (default) or `http`; options after `;` "
        "(see [Route options](#route-options) and [Datacenters and failover](#datacenters-and-failover)), "
        "e.g. `web:9302/http;balance=leastconn;check=/health;failover=dc2`; in the file `[routes.NAME]` "
        "tables (see [The config file](#the-config-file)); the first layer that names routes gives them all",
        help="service:port[/mode][;option=value...][,...]",
        metavar="SPEC",
        default_doc="none",
    ),
    _option("bind", kinds.ADDRESS, Settings.bind, "address the HAProxy frontends bind", metavar="ADDR"),
    _option(
        "template",
        kinds.TEXT,
        None,
        "HAProxy config template",
        metavar="FILE",
        default_doc="bundled `templates/haproxy.cfg.j2`",
    ),
    _option(
        "no_consul",
        kinds.PRESENCE_OF_DISABLED,
        "0",
        "run no agent; use the one at `CONSUL_HTTP_ADDR` (file: `enabled = false`)",
        key="consul.enabled",
        default_doc="off",
    ),
    _option(
        "no_haproxy",
        kinds.PRESENCE_OF_DISABLED,
        "0",
        "run no HAProxy (the sync loop still runs when templates are configured; file: `enabled = false`)",
        key="haproxy.enabled",
        default_doc="off",
    ),
    _option(
        "consul_bin",
        kinds.TEXT,
        Settings.consul_bin,
        "the consul binary",
        key="consul.bin",
        metavar="PATH",
        default_doc="from `PATH`",
    ),
    _option(
        "haproxy_bin",
        kinds.TEXT,
        Settings.haproxy_bin,
        "the haproxy binary",
        key="haproxy.bin",
        metavar="PATH",
        default_doc="from `PATH`",
    ),
    _option(
        "haproxy_log",
        kinds.ON_OFF,
        "on",
        "HAProxy's access log (one line per HTTP request or TCP session) in basenode's output, prefixed "
        "`haproxy \\|`; as a variable `1`/`0` or `on`/`off`",
    ),
    _option(
        "status_addr",
        kinds.HOST_PORT,
        DEFAULT_STATUS_ADDR,
        "`/health`, `/status`, `/metrics`, `/explain` (see [Operate it](#operate-it))",
        metavar="HOST:PORT",
    ),
    _option(
        "health_max_age",
        kinds.SECONDS,
        _seconds(DEFAULT_HEALTH_MAX_AGE),
        "`/health` fails when HAProxy was last confirmed in step with Consul longer ago",
        metavar="SECONDS",
    ),
    _option(
        "log_format",
        kinds.choice("text", "json"),
        Settings.log_format,
        "log lines; in `json`, other programs' output is wrapped too",
    ),
    _option(
        "log_level",
        kinds.choice("debug", "info", "warning", "error", fold_case=True),
        Settings.log_level,
        "the least important log lines shown",
    ),
    _option(
        "app_output",
        kinds.choice(*APP_OUTPUTS),
        Settings.app_output,
        "the application's stdout/stderr: its own, basenode's file descriptors (and terminal), bytes "
        "untouched; or through basenode, `app \\| line` (`prefix`) or a JSON log object (`json`) (see [The "
        "application's terminal and output](#the-applications-terminal-and-output))",
        help="the application's stdout/stderr: its own (inherit), or through basenode, prefixed or as JSON",
    ),
    _option(
        "include_warning",
        kinds.PRESENCE,
        "0",
        "also route to instances whose checks are `warning`",
        key="watch.include_warning",
        default_doc="off",
    ),
    _option(
        "watch_max_conns",
        kinds.number(2, MAX_CONNS_LIMIT, f"a number of connections 2-{MAX_CONNS_LIMIT}"),
        str(DEFAULT_MAX_CONNS),
        "blocking queries held on the agent at most (2-10,000; see [Templates](#templates))",
        key="watch.max_conns",
        metavar="N",
    ),
    _option(
        "apply_mode",
        kinds.choice("runtime", "reload"),
        Watch.apply_mode,
        "`runtime`: server changes through the runtime API, a seamless reload for the rest; `reload`: "
        "every change checked with `haproxy -c` and applied by a seamless reload, no runtime API command",
        key="watch.apply_mode",
    ),
    _option(
        "drain",
        kinds.SECONDS,
        _seconds(Settings.drain),
        "from deregistering the app's services to stopping the app, at most (see [The drain](#the-drain))",
        metavar="SECONDS",
    ),
    _option(
        "drain_quiet",
        kinds.SECONDS,
        _seconds(DEFAULT_DRAIN_QUIET),
        "the drain ends earlier, once no new connection has reached the app's ports for this long and none "
        "is open",
        metavar="SECONDS",
    ),
    _option(
        "template_specs",
        kinds.REPEATED,
        None,
        "one more template, named `spec1`, `spec2`, ... (repeatable; in the file `[templates.NAME]` tables; "
        "see [Templates](#templates))",
        flag="--template-spec",
        variable=None,
        key=None,
        metavar="SRC:DEST[:CHECK[:RELOAD]]",
        default_doc="none",
    ),
    _option(
        "kv_route_ports",
        kinds.PORT_RANGE,
        "{}-{}".format(*DEFAULT_KV_ROUTE_PORTS),
        "ports routes from Consul KV may use (see [Routes in Consul KV](#routes-in-consul-kv))",
        metavar="LOW-HIGH",
    ),
    _option(
        "kv_route_limit",
        kinds.number(0, 2**31, "a number of routes"),
        str(DEFAULT_KV_ROUTE_LIMIT),
        "routes from Consul KV at most",
        metavar="N",
    ),
    _option(
        "plugins_dir",
        kinds.TEXT,
        str(DEFAULT_PLUGINS_DIR),
        "data plugins for templates",
        metavar="DIR",
    ),
    _option(
        "app_user",
        kinds.account("user"),
        None,
        "the user (name or uid, with its groups) COMMAND runs as, so the image need not run the app as root",
        metavar="USER",
        default_doc="basenode's own",
    ),
    _option(
        "app_group",
        kinds.account("group"),
        None,
        "COMMAND's primary group",
        metavar="GROUP",
        default_doc="the user's",
    ),
    _option(
        "template_env",
        kinds.NAMES,
        None,
        "the variables `env()` in templates may read (a comma list; in the file a list)",
        metavar="NAMES",
        default_doc="none",
    ),
    _option(
        "app_pass_env",
        kinds.NAMES,
        None,
        "basenode's secret variables COMMAND inherits all the same (a comma list; in the file a list; see "
        "[Security model](#security-model))",
        metavar="NAMES",
        default_doc="none",
    ),
)


BY_NAME = {option.name: option for option in OPTIONS}


def _flag_field(option: Option) -> Tuple[str, object, object]:
    if option.kind.action == "store_true":
        return option.name, bool, field(default=False)
    if option.kind.action == "append":
        return option.name, Tuple[str, ...], field(default=())
    return option.name, Optional[str], field(default=None)


# What the command line said, one field per option (None, False or (): not given, so that the lower
# layers show through), and the application COMMAND.
Flags = make_dataclass(
    "Flags",
    [*(_flag_field(option) for option in OPTIONS), ("command", Tuple[str, ...], field(default=()))],
    frozen=True,
    namespace={"__module__": __name__, "__doc__": "What the command line said, one field per option."},
)
