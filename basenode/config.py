"""Settings: one frozen object built from defaults, the TOML file, the environment and flags.

Precedence everywhere: command-line flag > environment variable > config file > default.
All validation happens here, before anything starts; a bad value raises ConfigError whose
text names the value and where it came from (flag, variable, file:line).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from .frozen import cached_hash
from .route_options import OptionError, RouteOptions, parse_options, show, split_words
from .tokens import SAFE_TOKEN_RE

try:  # Python 3.11+
    import tomllib as _toml
except ImportError:  # 3.9, 3.10: the bundled tomli
    import tomli as _toml  # type: ignore[no-redef]

from . import childenv

DEFAULT_CONFIG = Path("/etc/basenode/basenode.toml")
DEFAULT_STATE_DIR = Path("/run/basenode")
DEFAULT_STATUS_ADDR = "127.0.0.1:8089"
DEFAULT_HEALTH_MAX_AGE = 600.0
# A few times the longest deregistration -> dropped everywhere seen in the Docker cluster (~0.1 s).
DEFAULT_DRAIN_QUIET = 0.5
DEFAULT_CONSUL_HTTP_ADDR = "127.0.0.1:8500"
ROUTES_KV_PREFIX = "basenode/routes/"
DEFAULT_PLUGINS_DIR = Path("/etc/basenode/plugins")

# Signals that reach the application COMMAND by default; the rest stop basenode.
FORWARDED_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)

# \Z, not $: `$` also matches before a final newline, and "web\n" is not a service name. Nor are "."
# and "..": in the URL of a Consul read (/v1/health/service/..) they are path steps, and the read fails.
SERVICE_NAME_RE = re.compile(r"^(?!\.\.?\Z)[A-Za-z0-9._-]{1,128}\Z")
# Consul's datacenter names: letters, digits, `_` and `-`.
DATACENTER_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
PROGRAM_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TEMPLATE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PLUGIN_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
AUTORESTART = ("always", "on-failure", "never")
ROUTE_MODES = ("tcp", "http")
APP_PROGRAM = "app"
# How the application's stdout/stderr reach basenode's: its own fds (as tini gives them), or
# through basenode's pipes, prefixed `app | ` or wrapped as JSON log objects like other programs'.
APP_OUTPUTS = ("inherit", "prefix", "json")


_NAMES_ITSELF = re.compile(r"^(--[a-z-]+|[A-Z][A-Z0-9_]*)$")


class ConfigError(Exception):
    """A bad value: `str()` is the one-line message shown to the user."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source = source
        self.key = key
        self.message = message
        where = f"{source}: " if source else ""
        # A flag or a variable already names the value; a file position needs the key.
        what = f"{key}: " if key and not _NAMES_ITSELF.match(source) else ""
        super().__init__(f"{where}{what}{message}")


@dataclass(frozen=True)
class Program:
    """One supervised process. The application COMMAND after `--` is the program named `app`."""

    name: str
    command: Tuple[str, ...]
    environment: Tuple[Tuple[str, str], ...] = ()
    directory: Optional[str] = None
    user: Optional[str] = None
    autorestart: str = "on-failure"  # always | on-failure | never
    startsecs: float = 1.0  # must stay up this long to count as started
    startretries: int = 3  # failed starts in a row before FATAL
    backoff_initial: float = 0.5  # first restart delay; doubles, with jitter, up to backoff_max
    backoff_max: float = 30.0
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 10.0  # SIGKILL after this long
    depends_on: Tuple[str, ...] = ()
    required: bool = False  # FATAL stops basenode with a non-zero status
    forward_signals: Tuple[int, ...] = ()  # signals to basenode passed on to this program
    # Readiness (ready.py): not "up" for depends_on until one of these holds, checked from startsecs on.
    ready_file: Optional[str] = None  # the file exists
    ready_tcp: Optional[Tuple[str, int]] = None  # a connection to (address, port) is accepted
    ready_http: Optional[str] = None  # a GET of this http:// URL answers 200-399
    ready_command: Tuple[str, ...] = ()  # this command exits 0
    main: bool = False  # its exit ends basenode with its status (the application COMMAND)
    # Stopped before every other program, whatever the start order: the sync loop, so that it
    # does not try to apply changes to an HAProxy that is being stopped.
    stop_first: bool = False
    # inherit: basenode's own stdout/stderr (and, for the main program, the terminal); prefix or
    # json: through basenode, as `NAME | line` or a JSON log object; None: prefix, or json with
    # --log-format json.
    output: Optional[str] = None
    # --- hostile neighbours (issue 12): who the program runs as, which of basenode's secrets it keeps
    group: Optional[str] = None  # primary group (default: the user's)
    pass_env: Tuple[str, ...] = ()  # secret variables (childenv.SECRET_ENV) it inherits all the same


@dataclass(frozen=True)
class Route:
    """A Consul service that gets a local frontend on `port`."""

    service: str
    port: int
    mode: str = "tcp"  # tcp | http
    tag: Optional[str] = None  # only instances carrying this tag
    source: str = ""  # where the route came from, for messages: "--routes", "consul kv", "basenode.toml:4"
    # Per-route HAProxy options (basenode/route_options.py).
    options: RouteOptions = field(default_factory=RouteOptions)
    datacenter: Optional[str] = None  # where its instances come from; None: the local agent's
    # Datacenters whose healthy instances are the backup servers, first one first (see routes.py).
    failover: Tuple[str, ...] = ()

    __hash__ = cached_hash


@dataclass(frozen=True)
class ConsulHTTP:
    """How to reach the Consul HTTP API, read as the consul CLI reads its variables."""

    addr: str = DEFAULT_CONSUL_HTTP_ADDR  # host:port, or a URL with http:// or https://
    token: Optional[str] = field(default=None, repr=False)  # never logged
    cacert: Optional[str] = None
    client_cert: Optional[str] = None
    client_key: Optional[str] = None
    ssl_verify: bool = True

    @property
    def scheme(self) -> str:
        return "https" if self.addr.startswith("https://") or self.cacert or self.client_cert else "http"

    @property
    def host_port(self) -> Tuple[str, int]:
        return split_host_port(self.addr.split("://", 1)[-1], default_port=8500)


@dataclass(frozen=True)
class Agent:
    """The Consul agent basenode runs (unless --no-consul)."""

    join: Tuple[str, ...] = ()
    join_source: str = ""  # where `join` came from, for messages: CONSUL_JOIN, file:line, link variables
    datacenter: Optional[str] = None
    encrypt: Optional[str] = field(default=None, repr=False)
    server: bool = False
    bootstrap_expect: Optional[int] = None
    node_name: Optional[str] = None
    data_dir: Optional[str] = None  # default: <state_dir>/consul
    extra_args: Tuple[str, ...] = ()


DEFAULT_MAX_CONNS = 100
DEFAULT_KV_ROUTE_PORTS = (1024, 65535)
DEFAULT_KV_ROUTE_LIMIT = 100
MAX_CONNS_LIMIT = 10000


@dataclass(frozen=True)
class Watch:
    """The watch -> render -> apply loop."""

    wait_min: float = 0.05  # changes closer than this are coalesced into one apply
    wait_max: float = 1.0  # no change waits longer than this to be applied
    blocking_wait: str = "5m"  # Consul's `wait` for blocking queries
    include_warning: bool = False
    mode: str = "blocking"  # blocking | poll (a full read every poll_interval)
    poll_interval: float = 5.0
    # runtime: runtime API, reload only when routes change; reload: always; restart: stop and start
    apply_mode: str = "runtime"
    # With no answer from Consul this long after start, HAProxy (and so the app) starts anyway with
    # the configured routes and no instances; the catalog fills them in when Consul answers.
    startup_grace: float = 15.0
    # Blocking queries held on the agent at most; services past it ride on one catalog-wide watch.
    # Under Consul's default of 200 connections per client, with room for the CLI, checks, register.
    max_conns: int = DEFAULT_MAX_CONNS


@dataclass(frozen=True)
class Service:
    """A service basenode registers with the local agent while the application runs."""

    name: str
    port: int
    id: str = ""  # default: the name
    tags: Tuple[str, ...] = ()
    check_http: Optional[str] = None  # a path (/health) or a full URL
    check_tcp: bool = False
    check_interval: str = "10s"
    source: str = ""
    # The rest of registrator's variables (registration.py parses and validates them all):
    meta: Tuple[Tuple[str, str], ...] = ()
    address: Optional[str] = None  # None: the agent's address
    weight: Optional[Tuple[int, int]] = None  # (passing, warning); None: Consul's default (1, 1)
    check_grpc: Optional[str] = None  # HOST:PORT[/SERVICE]
    check_ttl: Optional[str] = None  # basenode passes it while the application runs
    check_timeout: str = "2s"
    check_deregister_after: Optional[str] = None  # Consul's DeregisterCriticalServiceAfter

    @property
    def service_id(self) -> str:
        return self.id or self.name


@dataclass(frozen=True)
class TemplateSpec:
    """One file rendered from a template: [templates.NAME] in the config file, or --template-spec."""

    name: str
    source: Path
    destination: Path
    mode: int = 0o644
    owner: Optional[str] = None  # user the file belongs to (None: basenode's own)
    group: Optional[str] = None
    # Run on the candidate before it replaces the destination: an argv, or one /bin/sh -c string when shell.
    check: Tuple[str, ...] = ()
    shell: bool = False  # check and reload_command run through /bin/sh -c
    # After a successful write, at most one of these three:
    reload_program: Optional[str] = None  # a supervised program that gets reload_signal
    reload_signal: int = signal.SIGHUP
    restart_program: Optional[str] = None  # a supervised program that is restarted
    reload_command: Tuple[str, ...] = ()  # same form as check
    plugins: Tuple[str, ...] = ()  # <plugins_dir>/<name>.py whose context() this template sees
    pass_env: Tuple[str, ...] = ()  # secret variables its check and reload_command inherit (issue 12)
    mode_given: bool = False  # `mode` was set: else 0644, or 0600 for text with KV or env() values
    origin: str = ""  # where it was defined, for messages: "basenode.toml:12", "--template-spec"


@dataclass(frozen=True)
class App:
    """The application COMMAND's own settings ([app] in the file): when it counts as up."""

    startsecs: float = 0.0
    ready_file: Optional[str] = None
    ready_tcp: Optional[Tuple[str, int]] = None
    ready_http: Optional[str] = None
    ready_command: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    config_file: Optional[Path] = None
    state_dir: Path = DEFAULT_STATE_DIR
    routes: Tuple[Route, ...] = ()
    bind: str = "127.0.0.1"
    template: Optional[Path] = None  # None: the bundled templates/haproxy.cfg.j2
    run_consul: bool = True
    run_haproxy: bool = True
    consul_bin: str = "consul"
    haproxy_bin: str = "haproxy"
    # HAProxy's workers drop to this user and group when basenode runs as root (the master stays
    # root to re-bind on reload). Default: the `haproxy` user where it exists (Debian's package).
    haproxy_user: Optional[str] = None
    haproxy_group: Optional[str] = None
    # HAProxy's access log (one line per request or TCP session) on its stdout, which basenode
    # prefixes `haproxy |` like every program's output.
    haproxy_log: bool = True
    status_addr: Tuple[str, int] = ("127.0.0.1", 8089)
    log_format: str = "text"
    log_level: str = "info"
    consul_http: ConsulHTTP = ConsulHTTP()
    agent: Agent = Agent()
    watch: Watch = Watch()
    programs: Tuple[Program, ...] = ()
    command: Tuple[str, ...] = ()  # the application COMMAND after `--`
    services: Tuple[Service, ...] = ()  # registered while the application runs
    drain: float = 2.0  # seconds between deregistering and stopping the application
    # The drain ends once no new connection to the app's ports has come for this long (and none is open).
    drain_quiet: float = DEFAULT_DRAIN_QUIET
    # /health fails when HAProxy was last confirmed in step with Consul longer ago than this. A
    # quiet catalog still answers every blocking wait (5 min), so twice that is a stuck loop.
    health_max_age: float = DEFAULT_HEALTH_MAX_AGE
    templates: Tuple[TemplateSpec, ...] = ()  # files rendered beside HAProxy's config
    plugins_dir: Path = DEFAULT_PLUGINS_DIR
    # Routes from Consul KV reach every node: they may only use these ports, and only so many of them.
    kv_route_ports: Tuple[int, int] = DEFAULT_KV_ROUTE_PORTS
    kv_route_limit: int = DEFAULT_KV_ROUTE_LIMIT
    app_output: str = "inherit"  # one of APP_OUTPUTS
    app: App = App()  # the [app] table: when the application counts as up
    # --- hostile neighbours (issue 12): see load_hardening
    app_user: Optional[str] = None  # the application COMMAND runs as this user (default: basenode's)
    app_group: Optional[str] = None
    app_pass_env: Tuple[str, ...] = ()  # secret variables the application inherits all the same
    template_env: Tuple[str, ...] = ()  # the variables env() in templates may read

    @property
    def run_sync(self) -> bool:
        """The sync loop runs for HAProxy's config or for any other template."""
        return self.run_haproxy or bool(self.templates)

    @property
    def haproxy_cfg(self) -> Path:
        return self.state_dir / "haproxy.cfg"

    @property
    def sync_ready_file(self) -> Path:
        """Written by the sync loop once its first renders are done: what `depends_on sync` waits for."""
        return self.state_dir / "sync.ready"

    @property
    def haproxy_master_socket(self) -> Path:
        return self.state_dir / "haproxy-master.sock"

    @property
    def haproxy_stats_socket(self) -> Path:
        return self.state_dir / "haproxy.sock"

    @property
    def consul_data_dir(self) -> Path:
        return Path(self.agent.data_dir) if self.agent.data_dir else self.state_dir / "consul"


def split_host_port(text: str, default_port: Optional[int] = None) -> Tuple[str, int]:
    """'127.0.0.1:8089' -> ('127.0.0.1', 8089); '[::1]:80' -> ('::1', 80). Raises ValueError."""
    host, sep, port_text = text.rpartition(":")
    if not sep or (host.count(":") and not host.startswith("[")):
        if default_port is None:
            raise ValueError(f"expected host:port, got {_show(text)}")
        host, port_text = text, str(default_port)
    host = host.strip("[]")
    if not host:
        raise ValueError(f"expected host:port, got {_show(text)}")
    port = parse_port(port_text)
    return host, port


def parse_port(text: Any) -> int:
    if isinstance(text, bool):
        raise ValueError(f"expected a port 1-65535, got {_show(text)}")
    try:
        port = int(text, 10) if isinstance(text, str) else int(text)
    except (TypeError, ValueError):
        raise ValueError(f"expected a port 1-65535, got {_show(text)}") from None
    if not 1 <= port <= 65535 or (isinstance(text, float) and text != port):
        raise ValueError(f"expected a port 1-65535, got {_show(text)}")
    return port


def parse_route(text: str, source: str) -> Route:
    """One route, `service:port[/mode][;name=value...]`; raises ConfigError naming the text and its source.

    The `name=value` items are `tag` and the options of basenode/route_options.py."""
    spec, *items = text.strip().split(";")
    service, sep, rest = spec.strip().partition(":")
    port_text, _, mode = rest.partition("/")
    mode = mode or "tcp"
    problem = None
    if not sep:
        problem = "expected service:port[/mode]"
    elif not SERVICE_NAME_RE.match(service):
        problem = "service name must match [A-Za-z0-9._-]{1,128}"
    elif mode not in ROUTE_MODES:
        problem = f"mode must be tcp or http, got {_show(mode)}"
    else:
        try:
            route = Route(service=service, port=parse_port(port_text), mode=mode, source=source)
        except ValueError as e:
            problem = str(e)
        else:
            return with_options(route, [item.strip() for item in items if item.strip()])
    raise ConfigError(source, "", f"route {_show(text.strip())}: {problem}")


def with_options(route: Route, words: Sequence[str]) -> Route:
    """`route` with the `tag=TAG` and option words of its text form (`--routes`, a KV value).

    ConfigError naming the route, the option, its value and the route's source."""
    try:
        pairs = split_words(words)
        tag = pairs.pop("tag", None)
        if tag is not None and not SAFE_TOKEN_RE.match(tag):
            raise OptionError("tag", tag, "expected a tag of letters, digits and ._:/@%+=,~-")
        if "dc" in pairs and "datacenter" in pairs:
            raise OptionError("dc", pairs["dc"], "given twice (dc and datacenter)")
        dc_name = "datacenter" if "datacenter" in pairs else "dc"
        failover_text = pairs.pop("failover", None)
        failover = None if failover_text is None else re.split(r"[+,]", failover_text)
        datacenter, failover = datacenters(pairs.pop(dc_name, None), failover, dc_name, failover_text)
        options = parse_options(pairs, route.mode)
    except OptionError as e:
        raise ConfigError(route.source, "", f"route {route.service}: {e}") from None
    return Route(route.service, route.port, route.mode, tag, route.source, options, datacenter, failover)


MAX_FAILOVER = 5


def datacenters(
    datacenter: Any, failover: Any, dc_name: str = "datacenter", failover_shown: Any = None
) -> Tuple[Optional[str], Tuple[str, ...]]:
    """A route's datacenter and failover list, validated; OptionError naming the bad one (the failover
    list as written, `failover_shown`, when it was text)."""
    shown = failover if failover_shown is None else failover_shown
    if datacenter is not None and not (isinstance(datacenter, str) and DATACENTER_RE.match(datacenter)):
        raise OptionError(dc_name, datacenter, "expected a datacenter name of letters, digits, _ and -")
    if failover is None:
        return datacenter, ()
    names = [failover] if isinstance(failover, str) else failover
    if not isinstance(names, (list, tuple)) or not names or len(names) > MAX_FAILOVER:
        raise OptionError("failover", shown, f"expected a list of 1-{MAX_FAILOVER} datacenter names")
    for name in names:
        if not (isinstance(name, str) and DATACENTER_RE.match(name)):
            raise OptionError("failover", shown, f"{show(name)} is not a datacenter name")
    if len(set(names)) != len(names) or datacenter in names:
        raise OptionError("failover", shown, "names a datacenter twice (or the route's own)")
    return datacenter, tuple(names)


def parse_routes(text: str, source: str) -> Tuple[Route, ...]:
    """`postgresql:9301,web:9302/http;balance=leastconn` -> routes; empty items are ignored."""
    return tuple(parse_route(item, source) for item in text.split(",") if item.strip())


def check_routes(routes: Sequence[Route]) -> None:
    """Two routes may not share a service or a port."""
    by_service: dict[str, Route] = {}
    by_port: dict[int, Route] = {}
    for route in routes:
        first = by_service.get(route.service)
        if first is not None:
            raise ConfigError(
                route.source, "", f"route {_show(route.service)} defined twice (first at {first.source})"
            )
        first = by_port.get(route.port)
        if first is not None:
            raise ConfigError(
                route.source,
                "",
                f"route {_show(route.service)}: port {route.port} already used by {_show(first.service)}",
            )
        by_service[route.service] = route
        by_port[route.port] = route


def signal_number(value: Any) -> int:
    """'TERM', 'SIGTERM', 15 -> 15. Raises ValueError."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return int(signal.Signals(value))
        except ValueError:
            raise ValueError(f"expected a signal name or number, got {_show(value)}") from None
    if isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else "SIG" + name
        sig = getattr(signal.Signals, name, None)
        if sig is not None:
            return int(sig)
    raise ValueError(f"expected a signal name or number, got {_show(value)}")


def resolve_command(argv0: str, path: Optional[str] = None) -> Optional[str]:
    """Full path of a command as execvp would find it, or None."""
    if "/" in argv0:
        return argv0 if os.access(argv0, os.X_OK) and os.path.isfile(argv0) else None
    return shutil.which(argv0, path=path)


def check_bind(address: str) -> str:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"expected an IP address, got {_show(address)}") from None
    return address


# --------------------------------------------------------------------------------------------
# Loading: defaults < file < environment < flags.

Environ = Mapping[str, str]


@dataclass(frozen=True)
class Flags:
    """What the command line said; None means "not given" so lower layers show through."""

    config: Optional[str] = None
    state_dir: Optional[str] = None
    routes: Optional[str] = None
    bind: Optional[str] = None
    template: Optional[str] = None
    no_consul: bool = False
    no_haproxy: bool = False
    consul_bin: Optional[str] = None
    haproxy_bin: Optional[str] = None
    haproxy_log: Optional[str] = None  # "on" | "off"
    status_addr: Optional[str] = None
    log_format: Optional[str] = None
    log_level: Optional[str] = None
    include_warning: bool = False
    watch_mode: Optional[str] = None
    poll_interval: Optional[str] = None
    watch_max_conns: Optional[str] = None
    kv_route_ports: Optional[str] = None
    kv_route_limit: Optional[str] = None
    apply_mode: Optional[str] = None
    drain: Optional[str] = None
    drain_quiet: Optional[str] = None
    health_max_age: Optional[str] = None
    template_specs: Tuple[str, ...] = ()  # --template-spec, repeatable
    plugins_dir: Optional[str] = None
    app_output: Optional[str] = None  # inherit | prefix | json
    command: Tuple[str, ...] = ()
    app_user: Optional[str] = None  # --app-user
    app_group: Optional[str] = None  # --app-group


class FileValues:
    """A parsed TOML file that can say on which line a key stands."""

    def __init__(self, path: Path, text: str, data: Mapping[str, Any]) -> None:
        self.path = path
        self.lines = text.splitlines()
        self.data = data

    def source(self, dotted: str) -> str:
        line = _locate(self.lines, dotted.split("."))
        return f"{self.path}:{line}" if line else str(self.path)


def _locate(lines: Sequence[str], keys: Sequence[str]) -> Optional[int]:
    """Line number of a key in TOML text: the key's own line, else its table's header line."""
    table_re = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    key_re = re.compile(r"^\s*([A-Za-z0-9_.\"'-]+)\s*=")
    table: list[str] = []
    header_line = None
    want_table, want_key = list(keys[:-1]), keys[-1]
    for number, line in enumerate(lines, 1):
        m = table_re.match(line)
        if m:
            table = [part.strip().strip("\"'") for part in m.group(1).split(".")]
            if table == list(keys):
                header_line = number
            continue
        m = key_re.match(line)
        if m:
            path = table + [part.strip().strip("\"'") for part in m.group(1).split(".")]
            if path == list(keys) or (path[: len(keys)] == list(keys)):
                return number
            if table == want_table and path[-1] == want_key and len(path) == len(keys):
                return number
    return header_line


def _show(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def read_file(path: Path, explicit: bool, source: str) -> Optional[FileValues]:
    """Parse the TOML config; a missing default file is not an error, a missing named one is."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(source, "", f"config file {_show(str(path))} not found") from None
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), "", f"cannot read config file: {e}") from None
    try:
        data = _toml.loads(text)
    except _toml.TOMLDecodeError as e:
        line = getattr(e, "lineno", None) or _line_from_message(str(e))
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(where, "", f"invalid TOML: {str(e).split(' (at line')[0]}") from None
    return FileValues(path, text, data)


def _line_from_message(message: str) -> Optional[int]:
    m = re.search(r"at line (\d+)", message)
    return int(m.group(1)) if m else None


class _Table:
    """Typed reads from one table of the config file, with unknown-key detection."""

    def __init__(self, file: Optional[FileValues], prefix: str, values: Mapping[str, Any]) -> None:
        self.file = file
        self.prefix = prefix
        self.values = values
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix and name else self.prefix or name

    def source(self, name: str) -> str:
        return self.file.source(self.key(name)) if self.file else ""

    def fail(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.source(name), self.key(name), message)

    def get(self, name: str, kind: str, default: Any = None) -> Any:
        self.used.add(name)
        if name not in self.values:
            return default
        value = self.values[name]
        try:
            return _CONVERT[kind](value)
        except (TypeError, ValueError) as e:
            raise self.fail(name, str(e) or f"expected {_EXPECT[kind]}, got {_show(value)}") from None

    def table(self, name: str) -> Mapping[str, Any]:
        self.used.add(name)
        value = self.values.get(name, {})
        if not isinstance(value, Mapping):
            raise self.fail(name, f"expected a table, got {_show(value)}")
        return value

    def check_unknown(self) -> None:
        for name in self.values:
            if name not in self.used:
                raise self.fail(name, "unknown key")


def _port_range(text: Any, source: str) -> Tuple[int, int]:
    """`LOW-HIGH` (or one port) -> (low, high); ConfigError naming the value and its source."""
    low, _, high = str(text).strip().partition("-")
    try:
        ports = (int(low), int(high or low))
    except ValueError:
        ports = (0, 0)
    if not (1 <= ports[0] <= ports[1] <= 65535):
        raise ConfigError(
            source, "kv_route_ports", f"expected a port range LOW-HIGH within 1-65535, got {_show(text)}"
        )
    return ports


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError("")
    return float(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("")
    return value


def _text_list(value: Any) -> Tuple[str, ...]:
    if (
        isinstance(value, str)
        or not isinstance(value, (list, tuple))
        or not all(isinstance(v, str) for v in value)
    ):
        raise ValueError("")
    return tuple(value)


def _signal_list(value: Any) -> Tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError("")
    numbers = tuple(signal_number(v) for v in value)
    for number in numbers:
        if number in (signal.SIGKILL, signal.SIGSTOP):  # a process cannot catch, so cannot forward, them
            raise ValueError(f"{signal.Signals(number).name} cannot be forwarded, got {_show(value)}")
    return numbers


def _environment(value: Any) -> Tuple[Tuple[str, str], ...]:
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError("")
    return tuple(sorted(value.items()))


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "seconds": _seconds,
    "count": _count,
    "text": _text,
    "flag": _flag,
    "text_list": _text_list,
    "signal": signal_number,
    "signal_list": _signal_list,
    "environment": _environment,
    "port": parse_port,
}
_EXPECT = {
    "seconds": "a number of seconds",
    "count": "a whole number >= 0",
    "text": "a string",
    "flag": "true or false",
    "text_list": "a list of strings",
    "signal": "a signal name or number",
    "signal_list": "a list of signal names",
    "environment": "a table of strings",
    "port": "a port 1-65535",
}


def _choose(*layers: Tuple[Optional[Any], str]) -> Tuple[Any, str]:
    """First layer with a value (flag, env, file, default) and its source."""
    for value, source in layers:
        if value is not None:
            return value, source
    return None, ""


def _env_flag(environ: Environ, name: str) -> Optional[bool]:
    value = environ.get(name)
    if value is None or value == "":
        return None
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, "", f"expected 1/0 or true/false, got {_show(value)}")


def _program(file: Optional[FileValues], name: str, values: Mapping[str, Any], environ: Environ) -> Program:
    t = _Table(file, f"programs.{name}", values)
    if not PROGRAM_NAME_RE.match(name):
        raise t.fail("", f"program name must match [A-Za-z0-9_-]{{1,64}}, got {_show(name)}")
    command = t.get("command", "text_list")
    if not command:
        raise t.fail("command", "required: the program's command as a list of strings")
    environment = t.get("environment", "environment", ())
    path = dict(environment).get("PATH", environ.get("PATH"))
    if resolve_command(command[0], path) is None:
        raise t.fail("command", f"command {_show(command[0])} not found")
    directory = t.get("directory", "text")
    if directory is not None and not os.path.isdir(directory):
        raise t.fail("directory", f"no such directory {_show(directory)}")
    user = t.get("user", "text")
    group = t.get("group", "text")
    for key, value in (("user", user), ("group", group)):
        problem = account_problem(key, value)
        if problem:
            raise t.fail(key, problem)
    pass_env = _pass_env(t, "pass_env")
    autorestart = t.get("autorestart", "text", "on-failure")
    if autorestart not in AUTORESTART:
        raise t.fail("autorestart", f"expected always, on-failure or never, got {_show(autorestart)}")
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


def _route_from_table(file: Optional[FileValues], service: str, values: Any) -> Route:
    t = _Table(file, f"routes.{service}", values if isinstance(values, Mapping) else {})
    if not isinstance(values, Mapping):
        raise t.fail("", f"expected a table with port, mode, tag and options, got {_show(values)}")
    if not SERVICE_NAME_RE.match(service):
        raise t.fail("", f"service name must match [A-Za-z0-9._-]{{1,128}}, got {_show(service)}")
    if "port" not in values:
        raise t.fail("port", "required")
    port, mode, tag = t.get("port", "port"), t.get("mode", "text", "tcp"), t.get("tag", "text")
    if mode not in ROUTE_MODES:
        raise t.fail("mode", f"expected tcp or http, got {_show(mode)}")
    route_keys = ("port", "mode", "tag", "datacenter", "failover")
    option_values = {name: value for name, value in values.items() if name not in route_keys}
    try:
        datacenter, failover = datacenters(values.get("datacenter"), values.get("failover"))
        options = parse_options(option_values, mode)
    except OptionError as e:
        raise t.fail(e.option, f"route {service}: {e}") from None
    t.used.update(values)
    return Route(
        service=service,
        port=port,
        mode=mode,
        tag=tag,
        source=t.source(""),
        options=options,
        datacenter=datacenter,
        failover=failover,
    )


def check_programs(programs: Sequence[Program], known: Sequence[str], sources: Mapping[str, str]) -> None:
    """depends_on must name existing programs and contain no cycle."""
    names = set(known) | {p.name for p in programs}
    deps = {p.name: p.depends_on for p in programs}
    for p in programs:
        for d in p.depends_on:
            if d not in names:
                raise ConfigError(
                    sources.get(p.name, ""), f"programs.{p.name}.depends_on", f"unknown program {_show(d)}"
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


def load(flags: Flags, environ: Environ) -> Settings:
    """Build the Settings from every layer; ConfigError on the first bad value."""
    config_value, config_source = _choose(
        (flags.config, "--config"), (environ.get("BASENODE_CONFIG") or None, "BASENODE_CONFIG")
    )
    config_path = Path(config_value) if config_value else DEFAULT_CONFIG
    file = read_file(config_path, explicit=config_value is not None, source=config_source)
    if file is not None:
        check_trusted(file.path, "config file", config_source, "")
    top = _Table(file, "", file.data if file else {})

    def pick(flag: Optional[Any], env_name: Optional[str], file_key: Optional[str], kind: str, default: Any):
        env_value = environ.get(env_name) if env_name else None
        file_value = top.get(file_key, kind) if file_key else None
        return _choose(
            (flag, "--" + (file_key or "").replace("_", "-")),
            (env_value if env_value != "" else None, env_name or ""),
            (file_value, top.source(file_key) if file_key else ""),
            (default, "default"),
        )

    state_dir, _ = pick(flags.state_dir, "BASENODE_STATE_DIR", "state_dir", "text", str(DEFAULT_STATE_DIR))
    bind, bind_src = pick(flags.bind, "BASENODE_BIND", "bind", "text", "127.0.0.1")
    try:
        check_bind(bind)
    except ValueError as e:
        raise ConfigError(bind_src, "bind", str(e)) from None
    template, template_src = pick(flags.template, "BASENODE_TEMPLATE", "template", "text", None)
    if template is not None and not os.path.isfile(template):
        raise ConfigError(template_src, "template", f"no such file {_show(template)}")
    if template is not None:
        check_trusted(Path(template), "template", template_src, "template")
    status_text, status_src = pick(
        flags.status_addr, "BASENODE_STATUS_ADDR", "status_addr", "text", DEFAULT_STATUS_ADDR
    )
    try:
        status_addr = split_host_port(status_text)
    except ValueError as e:
        raise ConfigError(status_src, "status_addr", str(e)) from None
    log_format, log_format_src = pick(flags.log_format, "BASENODE_LOG_FORMAT", "log_format", "text", "text")
    if log_format not in ("text", "json"):
        raise ConfigError(log_format_src, "log_format", f"expected text or json, got {_show(log_format)}")
    log_level, log_level_src = pick(flags.log_level, "BASENODE_LOG_LEVEL", "log_level", "text", "info")
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(
            log_level_src, "log_level", f"expected debug, info, warning or error, got {_show(log_level)}"
        )

    routes = _load_routes(flags, environ, file, top)
    consul_table = _Table(file, "consul", top.table("consul"))
    haproxy_table = _Table(file, "haproxy", top.table("haproxy"))
    watch = _load_watch(flags, file, top.table("watch"), environ)
    consul_bin = _choose(
        (flags.consul_bin, "--consul-bin"),
        (environ.get("BASENODE_CONSUL_BIN") or None, "BASENODE_CONSUL_BIN"),
        (consul_table.get("bin", "text"), consul_table.source("bin")),
        ("consul", "default"),
    )
    haproxy_bin = _choose(
        (flags.haproxy_bin, "--haproxy-bin"),
        (environ.get("BASENODE_HAPROXY_BIN") or None, "BASENODE_HAPROXY_BIN"),
        (haproxy_table.get("bin", "text"), haproxy_table.source("bin")),
        ("haproxy", "default"),
    )
    haproxy_user, haproxy_group = _haproxy_user(haproxy_table)
    haproxy_log = _haproxy_log(flags, environ, top)
    run_consul = not flags.no_consul and consul_table.get("enabled", "flag", True)
    run_haproxy = not flags.no_haproxy and haproxy_table.get("enabled", "flag", True)
    agent = _load_agent(environ, consul_table)
    consul_table.check_unknown()
    haproxy_table.check_unknown()

    services = _load_services(environ, file, top.table("services"))

    def seconds(flag: Optional[str], key: str, default: float) -> float:
        value, source = _choose(
            (flag, "--" + key.replace("_", "-")),
            (environ.get("BASENODE_" + key.upper()) or None, "BASENODE_" + key.upper()),
            (top.get(key, "seconds"), top.source(key)),
            (default, "default"),
        )
        try:
            return _seconds(float(value))
        except (TypeError, ValueError):
            raise ConfigError(source, key, f"expected a number of seconds, got {_show(value)}") from None

    drain = seconds(flags.drain, "drain", 2.0)
    drain_quiet = seconds(flags.drain_quiet, "drain_quiet", DEFAULT_DRAIN_QUIET)
    health_max_age = seconds(flags.health_max_age, "health_max_age", DEFAULT_HEALTH_MAX_AGE)

    program_tables = top.table("programs")
    programs = tuple(
        _program(file, name, values if isinstance(values, Mapping) else {"command": values}, environ)
        for name, values in program_tables.items()
    )
    kv_ports_text, kv_ports_src = pick(
        flags.kv_route_ports, "BASENODE_KV_ROUTE_PORTS", "kv_route_ports", "text", None
    )
    kv_route_ports = (
        DEFAULT_KV_ROUTE_PORTS if kv_ports_text is None else _port_range(kv_ports_text, kv_ports_src)
    )
    kv_limit_raw, kv_limit_src = pick(
        flags.kv_route_limit, "BASENODE_KV_ROUTE_LIMIT", "kv_route_limit", "count", DEFAULT_KV_ROUTE_LIMIT
    )
    try:
        kv_route_limit = int(kv_limit_raw)
    except (TypeError, ValueError):
        kv_route_limit = -1
    if kv_route_limit < 0:
        raise ConfigError(
            kv_limit_src, "kv_route_limit", f"expected a number of routes, got {_show(kv_limit_raw)}"
        )
    plugins_dir, _ = pick(
        flags.plugins_dir, "BASENODE_PLUGINS_DIR", "plugins_dir", "text", str(DEFAULT_PLUGINS_DIR)
    )
    app_output = _app_output(flags, environ, top)
    app = _load_app(file, top.table("app"), environ)
    supervised = [p.name for p in programs] + [APP_PROGRAM]
    templates = _load_templates(flags, file, top.table("templates"), Path(plugins_dir), supervised)
    check_destinations(templates, Path(state_dir) / "haproxy.cfg" if run_haproxy else None)
    hardening = load_hardening(flags, environ, top)
    top.check_unknown()

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
    for name, (binary, source), needed in (
        ("consul", consul_bin, run_consul),
        ("haproxy", haproxy_bin, run_haproxy),
    ):
        if needed and resolve_command(binary, environ.get("PATH")) is None:
            raise ConfigError(
                source, f"{name}_bin", f"{name} binary {_show(binary)} not found (or use --no-{name})"
            )
    if flags.command and resolve_command(flags.command[0], environ.get("PATH")) is None:
        raise ConfigError("COMMAND", "", f"command {_show(flags.command[0])} not found")

    return Settings(
        config_file=file.path if file else None,
        state_dir=Path(state_dir),
        routes=routes,
        bind=bind,
        template=Path(template) if template else None,
        run_consul=run_consul,
        run_haproxy=run_haproxy,
        consul_bin=consul_bin[0],
        haproxy_bin=haproxy_bin[0],
        haproxy_user=haproxy_user,
        haproxy_group=haproxy_group,
        haproxy_log=haproxy_log,
        status_addr=status_addr,
        kv_route_ports=kv_route_ports,
        kv_route_limit=kv_route_limit,
        log_format=log_format,
        log_level=log_level.lower(),
        consul_http=load_consul_http(environ),
        agent=agent,
        watch=watch,
        programs=programs,
        command=tuple(flags.command),
        services=services,
        drain=drain,
        drain_quiet=drain_quiet,
        health_max_age=health_max_age,
        templates=templates,
        plugins_dir=Path(plugins_dir),
        app_output=app_output,
        app=app,
        **hardening,
    )


# --- the application ---------------------------------------------------------------------------


def _app_output(flags: Flags, environ: Environ, top: _Table) -> str:
    """--app-output > BASENODE_APP_OUTPUT > the file's app_output > inherit."""
    value, source = _choose(
        (flags.app_output, "--app-output"),
        (environ.get("BASENODE_APP_OUTPUT") or None, "BASENODE_APP_OUTPUT"),
        (top.get("app_output", "text"), top.source("app_output")),
        ("inherit", "default"),
    )
    if value not in APP_OUTPUTS:
        raise ConfigError(source, "app_output", f"expected inherit, prefix or json, got {_show(value)}")
    return value


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


def http_target(url: str) -> Tuple[str, int, str]:
    """(address, port, path and query) of an http:// URL on an IP address or localhost. ValueError."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"expected an http:// URL, got {_show(url)}")
    host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
    try:
        check_bind(host)  # an IP address: PID 1 resolves no names
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"expected an http:// URL on an IP address or localhost, got {_show(url)}") from None
    path = parts.path or "/"
    return host, port, path + (f"?{parts.query}" if parts.query else "")


def _readiness(t: _Table, environ: Environ, variables: Optional[Mapping[str, str]] = None) -> dict:
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
                    problem = f"command {_show(fields[key][0])} not found"
            else:
                fields[key] = _text(value)
        except (TypeError, ValueError) as e:
            problem = str(e) or f"expected {_READY_EXPECT[key]}, got {_show(value)}"
        if problem:
            raise ConfigError(sources[key], t.key(key), problem)
    return fields


_READY_EXPECT = {
    "ready_file": "a path",
    "ready_tcp": "a port or address:port",
    "ready_http": "an http:// URL",
    "ready_command": "a list of strings",
}


def _load_app(file: Optional[FileValues], values: Mapping[str, Any], environ: Environ) -> App:
    """[app]: the application's startsecs and readiness (BASENODE_APP_READY_* win over the file)."""
    t = _Table(file, "app", values)
    app = App(
        startsecs=t.get("startsecs", "seconds", 0.0),
        **_readiness(t, environ, APP_READY_VARIABLES),
    )
    t.check_unknown()
    return app


def _load_services(
    environ: Environ, file: Optional[FileValues], tables: Mapping[str, Any]
) -> Tuple[Service, ...]:
    """Registrator's variables and [services.NAME] tables, parsed by registration.py."""
    from . import registration

    services = registration.from_environment(environ)
    for name, values in tables.items():
        t = _Table(file, f"services.{name}", values if isinstance(values, Mapping) else {})
        if not isinstance(values, Mapping):
            raise t.fail("", f"expected a table, got {_show(values)}")
        for unknown in set(values) - set(registration.VARIABLES):
            raise t.fail(unknown, "unknown key")
        services.append(registration.service_from(name, values, source=t.source, key=t.key))
    ids = [s.service_id for s in services]
    for service in services:
        if ids.count(service.service_id) > 1:
            raise ConfigError(service.source, "", f"service id {_show(service.service_id)} registered twice")
    return tuple(services)


def _load_routes(
    flags: Flags, environ: Environ, file: Optional[FileValues], top: _Table
) -> Tuple[Route, ...]:
    """Flag > env > file: the first layer that names routes defines them all (no merging across layers)."""
    if flags.routes is not None:
        routes = parse_routes(flags.routes, "--routes")
    elif environ.get("BASENODE_ROUTES"):
        routes = parse_routes(environ["BASENODE_ROUTES"], "BASENODE_ROUTES")
    else:
        routes = tuple(_route_from_table(file, s, v) for s, v in top.table("routes").items())
    check_routes(routes)
    return tuple(sorted(routes, key=lambda r: r.service))


def _load_watch(
    flags: Flags, file: Optional[FileValues], values: Mapping[str, Any], environ: Mapping[str, str]
) -> Watch:
    t = _Table(file, "watch", values)
    defaults = Watch()
    raw_max_conns, max_conns_source = _choose(
        (flags.watch_max_conns, "--watch-max-conns"),
        (environ.get("BASENODE_WATCH_MAX_CONNS") or None, "BASENODE_WATCH_MAX_CONNS"),
        (t.get("max_conns", "count"), t.source("max_conns")),
        (defaults.max_conns, "default"),
    )
    try:
        max_conns = int(raw_max_conns)
    except (TypeError, ValueError):
        max_conns = -1
    if not 2 <= max_conns <= MAX_CONNS_LIMIT:
        raise ConfigError(
            max_conns_source,
            "watch.max_conns",
            f"expected a number of connections 2-{MAX_CONNS_LIMIT}, got {_show(raw_max_conns)}",
        )
    mode = flags.watch_mode or t.get("mode", "text", defaults.mode)
    if mode not in ("blocking", "poll"):
        raise ConfigError(
            "--watch-mode" if flags.watch_mode else t.source("mode"),
            "watch.mode",
            f"expected blocking or poll, got {_show(mode)}",
        )
    apply_mode = flags.apply_mode or t.get("apply_mode", "text", defaults.apply_mode)
    if apply_mode not in ("runtime", "reload", "restart"):
        raise ConfigError(
            "--apply-mode" if flags.apply_mode else t.source("apply_mode"),
            "watch.apply_mode",
            f"expected runtime, reload or restart, got {_show(apply_mode)}",
        )
    poll_interval = t.get("poll_interval", "seconds", defaults.poll_interval)
    if flags.poll_interval is not None:
        try:
            poll_interval = _seconds(float(flags.poll_interval))
        except ValueError:
            raise ConfigError(
                "--poll-interval", "", f"expected a number of seconds, got {_show(flags.poll_interval)}"
            ) from None
    watch = Watch(
        wait_min=t.get("wait_min", "seconds", defaults.wait_min),
        wait_max=t.get("wait_max", "seconds", defaults.wait_max),
        blocking_wait=t.get("blocking_wait", "text", defaults.blocking_wait),
        include_warning=flags.include_warning or t.get("include_warning", "flag", defaults.include_warning),
        mode=mode,
        poll_interval=poll_interval,
        apply_mode=apply_mode,
        startup_grace=t.get("startup_grace", "seconds", defaults.startup_grace),
        max_conns=max_conns,
    )
    if watch.wait_max < watch.wait_min:
        raise t.fail("wait_max", f"must be >= wait_min ({watch.wait_min}), got {_show(watch.wait_max)}")
    if not re.match(r"^\d+(ms|s|m)$", watch.blocking_wait):
        raise t.fail("blocking_wait", f"expected a duration like 5m or 30s, got {_show(watch.blocking_wait)}")
    t.check_unknown()
    return watch


# Docker links to a Consul server, as docker-basenode images used them (CONSULSERVER_1_PORT_8500_TCP_ADDR):
# the serf LAN port's variables first, the HTTP port's second.
LINK_VARIABLE_RE = re.compile(r"^[A-Z0-9_]+_PORT_(8301|8500)_TCP_ADDR$")
JOIN_ADDRESS_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.:-]{1,253})(:[0-9]{1,5})?$")


def link_addresses(environ: Environ) -> Tuple[Tuple[str, ...], str]:
    """Addresses from Docker link variables, and their names as the source."""
    links = sorted((m.group(1), name) for name in environ for m in [LINK_VARIABLE_RE.match(name)] if m)
    found = tuple(dict.fromkeys(environ[name].strip() for _, name in links if environ[name].strip()))
    return found, "link variables " + ", ".join(name for _, name in links)


def check_join_address(address: str, source: str) -> str:
    if not JOIN_ADDRESS_RE.match(address):
        raise ConfigError(source, "", f"expected host or host:port to join, got {_show(address)}")
    return address


def _join(environ: Environ, t: _Table) -> Tuple[Tuple[str, ...], str]:
    """CONSUL_JOIN > the file's consul.join > link variables."""
    t.used.add("join")
    if environ.get("CONSUL_JOIN"):
        found = tuple(a.strip() for a in environ["CONSUL_JOIN"].split(",") if a.strip())
        source = "CONSUL_JOIN"
    elif "join" in t.values:
        found, source = t.get("join", "text_list", ()), t.source("join")
    else:
        found, source = link_addresses(environ)
    return tuple(check_join_address(a, source) for a in found), source


def _haproxy_user(t: _Table) -> Tuple[Optional[str], Optional[str]]:
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
        raise t.fail("user", f"no such user {_show(name)}") from None
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        group = None
    return entry.pw_name, group


def _haproxy_log(flags: Flags, environ: Environ, top: _Table) -> bool:
    """--haproxy-log on|off > BASENODE_HAPROXY_LOG > the file's haproxy_log > on."""
    switch = {"on": True, "off": False}
    if flags.haproxy_log is not None and flags.haproxy_log not in switch:
        raise ConfigError("--haproxy-log", "", f"expected on or off, got {_show(flags.haproxy_log)}")
    value, _ = _choose(
        (switch.get(flags.haproxy_log or ""), "--haproxy-log"),
        (_env_flag(environ, "BASENODE_HAPROXY_LOG"), "BASENODE_HAPROXY_LOG"),
        (top.get("haproxy_log", "flag"), top.source("haproxy_log")),
        (True, "default"),
    )
    return value


def _load_agent(environ: Environ, t: _Table) -> Agent:
    join, join_source = _join(environ, t)
    server_env = _env_flag(environ, "CONSUL_SERVER")
    server = server_env if server_env is not None else t.get("server", "flag", False)
    expect_env = environ.get("CONSUL_BOOTSTRAP_EXPECT")
    if expect_env:
        if not expect_env.isdigit() or int(expect_env) < 1:
            raise ConfigError(
                "CONSUL_BOOTSTRAP_EXPECT", "", f"expected a whole number >= 1, got {_show(expect_env)}"
            )
        bootstrap_expect: Optional[int] = int(expect_env)
    else:
        bootstrap_expect = t.get("bootstrap_expect", "count")
    return Agent(
        join=join,
        join_source=join_source,
        datacenter=environ.get("CONSUL_DATACENTER") or t.get("datacenter", "text"),
        encrypt=environ.get("CONSUL_ENCRYPT") or None,
        server=server,
        bootstrap_expect=bootstrap_expect,
        node_name=t.get("node_name", "text"),
        data_dir=t.get("data_dir", "text"),
        extra_args=t.get("extra_args", "text_list", ()),
    )


def load_consul_http(environ: Environ) -> ConsulHTTP:
    """Consul's own variables, as the consul CLI reads them."""
    token = environ.get("CONSUL_HTTP_TOKEN") or None
    token_file = environ.get("CONSUL_HTTP_TOKEN_FILE")
    if token is None and token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip() or None
        except OSError as e:
            raise ConfigError(
                "CONSUL_HTTP_TOKEN_FILE", "", f"cannot read {_show(token_file)}: {e.strerror}"
            ) from None
    verify = _env_flag(environ, "CONSUL_HTTP_SSL_VERIFY")
    for name in ("CONSUL_CACERT", "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY"):
        if environ.get(name) and not os.path.isfile(environ[name]):
            raise ConfigError(name, "", f"no such file {_show(environ[name])}")
    addr = environ.get("CONSUL_HTTP_ADDR") or DEFAULT_CONSUL_HTTP_ADDR
    try:
        split_host_port(addr.split("://", 1)[-1], default_port=8500)
    except ValueError as e:
        raise ConfigError("CONSUL_HTTP_ADDR", "", str(e)) from None
    return ConsulHTTP(
        addr=addr,
        token=token,
        cacert=environ.get("CONSUL_CACERT") or None,
        client_cert=environ.get("CONSUL_CLIENT_CERT") or None,
        client_key=environ.get("CONSUL_CLIENT_KEY") or None,
        ssl_verify=True if verify is None else verify,
    )


# --- templates ([templates.NAME], --template-spec) ---------------------------------------------

TEMPLATE_KEYS = (
    "source", "destination", "mode", "owner", "check", "shell", "reload_program", "reload_signal",
    "restart_program", "reload_command", "plugins", "pass_env",
)  # fmt: skip


def parse_mode(value: Any) -> int:
    """'0644', '644' or the TOML integer 0o644 -> 0o644. Raises ValueError."""
    if isinstance(value, str) and re.match(r"^0?[0-7]{3,4}$", value.strip()):
        return int(value.strip(), 8)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777:
        return value
    raise ValueError(f'expected an octal file mode like "0644", got {_show(value)}')


def parse_owner(value: Any) -> Tuple[str, Optional[str]]:
    """'user[:group]' -> (user, group or None); both must exist here. Raises ValueError."""
    import grp
    import pwd

    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected user or user:group, got {_show(value)}")
    user, _, group = value.strip().partition(":")
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"no such user {_show(user)}") from None
    if group:
        try:
            grp.getgrnam(group)
        except KeyError:
            raise ValueError(f"no such group {_show(group)}") from None
    return user, group or None


def parse_command(value: Any, shell: bool) -> Tuple[str, ...]:
    """A check or reload command: an argv list, or a string split with shlex (kept whole when shell)."""
    if isinstance(value, str):
        if shell:
            return (value,) if value.strip() else ()
        try:
            return tuple(shlex.split(value))
        except ValueError as e:
            raise ValueError(f"cannot split {_show(value)}: {e}") from None
    argv = _text_list(value)
    return (" ".join(_shell_word(word) for word in argv),) if shell and argv else argv


def _shell_word(word: str) -> str:
    """`word` quoted for /bin/sh, its {candidate} and {dest} left bare: outputs.substitute quotes them."""
    pieces = re.split(r"(\{candidate\}|\{dest\})", word)
    if word == "":
        return "''"
    return "".join(p if p in ("{candidate}", "{dest}") else shlex.quote(p) for p in pieces if p)


def parse_template_spec(text: str) -> Mapping[str, Any]:
    """--template-spec SRC:DEST[:CHECK[:RELOAD]] -> the keys of a [templates.NAME] table."""
    parts = text.split(":")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ConfigError("--template-spec", "", f"expected SRC:DEST[:CHECK[:RELOAD]], got {_show(text)}")
    if len(parts) > 4:  # a ':' inside CHECK or RELOAD (a URL): no split of it is surely the meant one
        raise ConfigError(
            "--template-spec",
            "",
            f"expected SRC:DEST[:CHECK[:RELOAD]], got {len(parts)} ':'-separated parts in {_show(text)}: "
            "CHECK and RELOAD may not contain ':' here; use a [templates.NAME] table",
        )
    values: dict[str, Any] = {"source": parts[0], "destination": parts[1]}
    if len(parts) > 2 and parts[2].strip():
        values["check"] = parts[2]
    if len(parts) > 3 and parts[3].strip():
        values["reload_command"] = parts[3]
    return values


def _template(
    t: _Table, name: str, plugins_dir: Path, supervised: Sequence[str], origin: str
) -> TemplateSpec:
    if not TEMPLATE_NAME_RE.match(name):
        raise t.fail("", f"template name must match [A-Za-z0-9_-]{{1,64}}, got {_show(name)}")
    for unknown in set(t.values) - set(TEMPLATE_KEYS):
        raise t.fail(unknown, "unknown key")
    source = t.get("source", "text")
    if not source:
        raise t.fail("source", "required: the template file")
    if not os.path.isfile(source):
        raise t.fail("source", f"no such file {_show(source)}")
    check_trusted(Path(source), "template", t.source("source"), t.key("source"))
    destination = t.get("destination", "text")
    if not destination:
        raise t.fail("destination", "required: the file to write")
    destination_path = Path(destination).absolute()
    if destination_path.is_dir():
        raise t.fail("destination", f"{_show(destination)} is a directory")
    if not destination_path.parent.is_dir():
        raise t.fail("destination", f"directory {_show(str(destination_path.parent))} does not exist")
    mode = 0o644
    if "mode" in t.values:
        try:
            mode = parse_mode(t.values["mode"])
        except ValueError as e:
            raise t.fail("mode", str(e)) from None
    owner = group = None
    if "owner" in t.values:
        try:
            owner, group = parse_owner(t.values["owner"])
        except ValueError as e:
            raise t.fail("owner", str(e)) from None
    shell = t.get("shell", "flag", False)
    commands = {}
    for key in ("check", "reload_command"):
        try:
            commands[key] = parse_command(t.values[key], shell) if key in t.values else ()
        except ValueError as e:
            raise t.fail(
                key, str(e) or f"expected a command (list of strings or a string), got {_show(t.values[key])}"
            ) from None
    actions = [key for key in ("reload_program", "restart_program", "reload_command") if key in t.values]
    if len(actions) > 1:
        raise t.fail(
            actions[1], f"only one of reload_program, restart_program, reload_command (also {actions[0]})"
        )
    for key in ("reload_program", "restart_program"):
        program = t.get(key, "text")
        if program is not None and program not in supervised:
            raise t.fail(
                key, f"{_show(program)} is not a supervised program (known: {', '.join(supervised)})"
            )
    if "reload_signal" in t.values and "reload_program" not in t.values:
        raise t.fail("reload_signal", "only with reload_program")
    plugins = t.get("plugins", "text_list", ())
    for plugin in plugins:
        if not PLUGIN_NAME_RE.match(plugin):
            raise t.fail("plugins", f"plugin name must be a Python identifier, got {_show(plugin)}")
        if not (plugins_dir / f"{plugin}.py").is_file():
            raise t.fail("plugins", f"no plugin {_show(plugin)}: {plugins_dir / (plugin + '.py')} not found")
        check_trusted(plugins_dir / f"{plugin}.py", "plugin", t.source("plugins"), t.key("plugins"))
    return TemplateSpec(
        name=name,
        source=Path(source).absolute(),
        destination=destination_path,
        mode=mode,
        owner=owner,
        group=group,
        check=commands["check"],
        shell=shell,
        reload_program=t.get("reload_program", "text"),
        reload_signal=t.get("reload_signal", "signal", signal.SIGHUP),
        restart_program=t.get("restart_program", "text"),
        reload_command=commands["reload_command"],
        plugins=plugins,
        pass_env=_pass_env(t, "pass_env"),
        mode_given="mode" in t.values,
        origin=origin,
    )


def _load_templates(
    flags: Flags,
    file: Optional[FileValues],
    tables: Mapping[str, Any],
    plugins_dir: Path,
    supervised: Sequence[str],
) -> Tuple[TemplateSpec, ...]:
    """[templates.NAME] tables, then each --template-spec as "spec1", "spec2", ... (both kinds add up)."""
    specs = []
    for name, values in tables.items():
        t = _Table(file, f"templates.{name}", values if isinstance(values, Mapping) else {})
        if not isinstance(values, Mapping):
            raise t.fail("", f"expected a table, got {_show(values)}")
        specs.append(_template(t, name, plugins_dir, supervised, t.source("")))
    for number, text in enumerate(flags.template_specs, 1):
        name = f"spec{number}"
        if name in tables:
            raise ConfigError("--template-spec", "", f"{name} is also a [templates.{name}] table")
        t = _Table(None, "", parse_template_spec(text))
        try:
            specs.append(_template(t, name, plugins_dir, supervised, "--template-spec"))
        except ConfigError as e:
            raise ConfigError("--template-spec", "", f"{_show(text)}: {e.key}: {e.message}") from None
    return tuple(specs)


def check_destinations(templates: Sequence[TemplateSpec], haproxy_cfg: Optional[Path]) -> None:
    """Two templates may not write one file, nor a template HAProxy's own config."""
    seen: dict[Path, TemplateSpec] = {}
    for spec in templates:
        first = seen.get(spec.destination)
        if first is not None:
            raise ConfigError(
                spec.origin,
                f"templates.{spec.name}.destination",
                f"{_show(str(spec.destination))} is also written by template {_show(first.name)}",
            )
        if haproxy_cfg is not None and spec.destination == haproxy_cfg.absolute():
            raise ConfigError(
                spec.origin,
                f"templates.{spec.name}.destination",
                "is HAProxy's own config, which basenode renders from --template",
            )
        seen[spec.destination] = spec


# --- hostile neighbours (issue 12): the application's user, and which secrets children keep --------


def account_problem(kind: str, name: Optional[str]) -> Optional[str]:
    """Why `name` is no user (kind "user") or group here, or None (also for None)."""
    if name is None:
        return None
    import grp
    import pwd

    try:
        if kind == "user":
            pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        else:
            grp.getgrgid(int(name)) if name.isdigit() else grp.getgrnam(name)
    except KeyError:
        return f"no such {kind} {_show(name)}"
    return None


def _pass_env(t: _Table, key: str) -> Tuple[str, ...]:
    names = t.get(key, "text_list", ())
    try:
        childenv.check_names(names)
    except ValueError as e:
        raise t.fail(key, str(e)) from None
    return names


def load_hardening(flags: Flags, environ: Environ, top: _Table) -> Dict[str, Any]:
    """Settings fields of issue 12: app_user, app_group (flag > BASENODE_APP_* > file key > none),
    app_pass_env and template_env (BASENODE_APP_PASS_ENV, BASENODE_TEMPLATE_ENV, comma-separated, > the
    file's list of the same name > none)."""
    found: Dict[str, Any] = {}
    for kind, flag in (("user", flags.app_user), ("group", flags.app_group)):
        env_name = f"BASENODE_APP_{kind.upper()}"
        value, source = _choose(
            (flag, f"--app-{kind}"),
            (environ.get(env_name) or None, env_name),
            (top.get(f"app_{kind}", "text"), top.source(f"app_{kind}")),
        )
        problem = account_problem(kind, value)
        if problem:
            raise ConfigError(source, f"app_{kind}", problem)
        found[f"app_{kind}"] = value
    found["template_env"] = _pass_env(top, "template_env")
    if environ.get("BASENODE_TEMPLATE_ENV"):
        found["template_env"] = _env_names(environ, "BASENODE_TEMPLATE_ENV")
    found["app_pass_env"] = _pass_env(top, "app_pass_env")
    if environ.get("BASENODE_APP_PASS_ENV"):
        found["app_pass_env"] = _env_names(environ, "BASENODE_APP_PASS_ENV")
    return found


def _env_names(environ: Environ, name: str) -> Tuple[str, ...]:
    """A comma list of variable names from variable `name`."""
    names = tuple(n.strip() for n in environ[name].split(",") if n.strip())
    try:
        childenv.check_names(names)
    except ValueError as e:
        raise ConfigError(name, "", str(e)) from None
    return names


def check_trusted(path: Path, what: str, source: str, key: str) -> None:
    """ConfigError unless `path` (and the directories above it) pass trust.check_trusted_file: owned
    by root or basenode's user, writable by nobody else. /dev/null (an empty config) is no file."""
    from . import trust

    if os.path.exists(path) and not os.path.isfile(path):
        return  # a device such as /dev/null: nothing in it to trust or not
    try:
        trust.check_trusted_file(path, what)
    except trust.UntrustedPath as e:
        raise ConfigError(source, key, str(e)) from None
