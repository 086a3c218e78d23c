"""What the settings are: the frozen objects `load` builds, and the constants they are checked against."""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

from ..frozen import cached_hash
from ..route_options import RouteOptions
from .values import split_host_port

DEFAULT_CONFIG = Path("/etc/basenode/basenode.toml")
DEFAULT_STATE_DIR = Path("/run/basenode")
DEFAULT_STATUS_ADDR = "127.0.0.1:8089"
DEFAULT_HEALTH_MAX_AGE = 600.0
# A few times the longest deregistration -> dropped everywhere in the Docker cluster (docs/benchmarks.md).
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
    # runtime: runtime API, reload only when routes change; reload: a seamless reload for every change
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
