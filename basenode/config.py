"""Settings: one frozen object built from defaults, the TOML file, the environment and flags.

Precedence everywhere: command-line flag > environment variable > config file > default.
All validation happens here, before anything starts; a bad value raises ConfigError whose
text names the value and where it came from (flag, variable, file:line).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

DEFAULT_CONFIG = Path("/etc/basenode/basenode.toml")
DEFAULT_STATE_DIR = Path("/run/basenode")
DEFAULT_STATUS_ADDR = "127.0.0.1:8089"
DEFAULT_CONSUL_HTTP_ADDR = "127.0.0.1:8500"
ROUTES_KV_PREFIX = "basenode/routes/"

# Signals that reach the application COMMAND by default; the rest stop basenode.
FORWARDED_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)

SERVICE_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
PROGRAM_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
AUTORESTART = ("always", "on-failure", "never")
ROUTE_MODES = ("tcp", "http")
APP_PROGRAM = "app"


class ConfigError(Exception):
    """A bad value: `str()` is the one-line message shown to the user."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source = source
        self.key = key
        self.message = message
        where = f"{source}: " if source else ""
        what = f"{key}: " if key else ""
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
    ready_file: Optional[str] = None  # not "up" (for depends_on) until this file exists
    main: bool = False  # its exit ends basenode with its status (the application COMMAND)


@dataclass(frozen=True)
class Route:
    """A Consul service that gets a local frontend on `port`."""

    service: str
    port: int
    mode: str = "tcp"  # tcp | http
    tag: Optional[str] = None  # only instances carrying this tag
    source: str = ""  # where the route came from, for messages: "--routes", "consul kv", "basenode.toml:4"


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
    datacenter: Optional[str] = None
    encrypt: Optional[str] = field(default=None, repr=False)
    server: bool = False
    bootstrap_expect: Optional[int] = None
    node_name: Optional[str] = None
    data_dir: Optional[str] = None  # default: <state_dir>/consul
    extra_args: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Watch:
    """The watch -> render -> apply loop."""

    wait_min: float = 0.05  # changes closer than this are coalesced into one apply
    wait_max: float = 1.0  # no change waits longer than this to be applied
    blocking_wait: str = "5m"  # Consul's `wait` for blocking queries
    include_warning: bool = False
    mode: str = "blocking"  # blocking | poll (the seed's 5 s polling, for comparison)
    poll_interval: float = 5.0
    apply_mode: str = "runtime"  # runtime (runtime API, reload only for structure) | reload | restart (the seed)


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
    status_addr: Tuple[str, int] = ("127.0.0.1", 8089)
    log_format: str = "text"
    log_level: str = "info"
    consul_http: ConsulHTTP = ConsulHTTP()
    agent: Agent = Agent()
    watch: Watch = Watch()
    programs: Tuple[Program, ...] = ()
    command: Tuple[str, ...] = ()  # the application COMMAND after `--`

    @property
    def haproxy_cfg(self) -> Path:
        return self.state_dir / "haproxy.cfg"

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
            raise ValueError(f"expected host:port, got {text!r}")
        host, port_text = text, str(default_port)
    host = host.strip("[]")
    if not host:
        raise ValueError(f"expected host:port, got {text!r}")
    port = parse_port(port_text)
    return host, port


def parse_port(text: Any) -> int:
    if isinstance(text, bool):
        raise ValueError(f"expected a port 1-65535, got {text!r}")
    try:
        port = int(text, 10) if isinstance(text, str) else int(text)
    except (TypeError, ValueError):
        raise ValueError(f"expected a port 1-65535, got {text!r}") from None
    if not 1 <= port <= 65535 or (isinstance(text, float) and text != port):
        raise ValueError(f"expected a port 1-65535, got {text!r}")
    return port


def parse_route(text: str, source: str) -> Route:
    """One route, `service:port[/mode]`; raises ConfigError naming the text and its source."""
    spec = text.strip()
    service, sep, rest = spec.partition(":")
    if not sep:
        raise ConfigError(source, "", f"expected service:port[/mode], got {text!r}")
    if not SERVICE_NAME_RE.match(service):
        raise ConfigError(source, "", f"service name must match [A-Za-z0-9._-]{{1,128}}, got {service!r}")
    port_text, _, mode = rest.partition("/")
    try:
        port = parse_port(port_text)
    except ValueError as e:
        raise ConfigError(source, service, str(e)) from None
    mode = mode or "tcp"
    if mode not in ROUTE_MODES:
        raise ConfigError(source, service, f"mode must be tcp or http, got {mode!r}")
    return Route(service=service, port=port, mode=mode, source=source)


def parse_routes(text: str, source: str) -> Tuple[Route, ...]:
    """`postgresql:9301,web:9302/http` -> routes; empty items are ignored."""
    return tuple(parse_route(item, source) for item in text.split(",") if item.strip())


def check_routes(routes: Sequence[Route]) -> None:
    """Two routes may not share a service or a port."""
    seen_service: dict[str, Route] = {}
    seen_port: dict[int, Route] = {}
    for route in routes:
        if route.service in seen_service:
            first = seen_service[route.service]
            raise ConfigError(route.source, route.service, f"route defined twice (first at {first.source})")
        if route.port in seen_port:
            first = seen_port[route.port]
            raise ConfigError(
                route.source, route.service, f"port {route.port} already used by route {first.service!r}"
            )
        seen_service[route.service] = route
        seen_port[route.port] = route


def signal_number(value: Any) -> int:
    """'TERM', 'SIGTERM', 15 -> 15. Raises ValueError."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return int(signal.Signals(value))
        except ValueError:
            raise ValueError(f"expected a signal name or number, got {value!r}") from None
    if isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else "SIG" + name
        sig = getattr(signal.Signals, name, None)
        if sig is not None:
            return int(sig)
    raise ValueError(f"expected a signal name or number, got {value!r}")


def resolve_command(argv0: str, path: Optional[str] = None) -> Optional[str]:
    """Full path of a command as execvp would find it, or None."""
    if "/" in argv0:
        return argv0 if os.access(argv0, os.X_OK) and os.path.isfile(argv0) else None
    return shutil.which(argv0, path=path)


def check_bind(address: str) -> str:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"expected an IP address, got {address!r}") from None
    return address
