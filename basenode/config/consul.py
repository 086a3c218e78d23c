"""`[consul]` and Consul's own variables: the agent basenode runs, and how to reach Consul's HTTP API
(read as the consul CLI reads `CONSUL_HTTP_*`). The agent's settings come from variables > file keys."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Tuple

from . import kinds, values
from .errors import ConfigError, show
from .file import Table, Tables
from .kinds import Kind
from .layers import Environ, first_layer, read, resolve
from .model import DEFAULT_CONSUL_HTTP_ADDR, Agent, ConsulHTTP
from .options import Option
from .values import split_host_port

# Docker links to a Consul server, as docker-basenode images used them (CONSULSERVER_1_PORT_8500_TCP_ADDR):
# the serf LAN port's variables first, the HTTP port's second.
LINK_VARIABLE_RE = re.compile(r"^[A-Z0-9_]+_PORT_(8301|8500)_TCP_ADDR$")
JOIN_ADDRESS_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.:-]{1,253})(:[0-9]{1,5})?$")


def _agent_option(name: str, variable: str, kind: Kind, default: Optional[str] = None) -> Option:
    """A setting of the agent: no flag, a Consul variable, a key of [consul]."""
    return Option(
        name, flag=None, variable=variable, key=f"consul.{name}", kind=kind, default=default, doc="", help=""
    )


def _positive(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError("")
    return int(raw)


AGENT_OPTIONS = (
    _agent_option(
        "join",
        "CONSUL_JOIN",
        Kind(
            variable=lambda raw: tuple(a.strip() for a in raw.split(",") if a.strip()),
            file=kinds.expecting("a list of strings", values.text_list),
        ),
    ),
    _agent_option("server", "CONSUL_SERVER", Kind(variable=kinds.SWITCH_TEXT, file=kinds.FILE_SWITCH), "0"),
    _agent_option(
        "bootstrap_expect",
        "CONSUL_BOOTSTRAP_EXPECT",
        Kind(
            variable=kinds.expecting("a whole number >= 1", _positive),
            file=kinds.expecting("a whole number >= 0", values.count),
        ),
    ),
    _agent_option("datacenter", "CONSUL_DATACENTER", kinds.TEXT),
)


def link_addresses(environ: Environ) -> Tuple[Tuple[str, ...], str]:
    """Addresses from Docker link variables, and their names as the source."""
    links = sorted((m.group(1), name) for name in environ for m in [LINK_VARIABLE_RE.match(name)] if m)
    found = tuple(dict.fromkeys(environ[name].strip() for _, name in links if environ[name].strip()))
    return found, "link variables " + ", ".join(name for _, name in links)


def check_join_address(address: str, source: str) -> str:
    if not JOIN_ADDRESS_RE.match(address):
        raise ConfigError(source, "", f"expected host or host:port to join, got {show(address)}")
    return address


def load_agent(environ: Environ, tables: Tables) -> Agent:
    """CONSUL_* variables > the [consul] table; `join` falls back to the link variables."""
    join_option, server, expect, datacenter = AGENT_OPTIONS
    layer = first_layer(join_option, None, environ, tables)
    join, join_source = (read(layer, join_option), layer.source) if layer else link_addresses(environ)
    t: Table = tables.section("consul")
    return Agent(
        join=tuple(check_join_address(a, join_source) for a in join),
        join_source=join_source,
        datacenter=resolve(datacenter, None, environ, tables)[0],
        encrypt=environ.get("CONSUL_ENCRYPT") or None,
        server=resolve(server, None, environ, tables)[0],
        bootstrap_expect=resolve(expect, None, environ, tables)[0],
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
                "CONSUL_HTTP_TOKEN_FILE", "", f"cannot read {show(token_file)}: {e.strerror}"
            ) from None
    verify_text = environ.get("CONSUL_HTTP_SSL_VERIFY") or ""
    try:
        verify = kinds.SWITCH_TEXT(verify_text) if verify_text else True
    except ValueError as e:
        raise ConfigError("CONSUL_HTTP_SSL_VERIFY", "", str(e)) from None
    for name in ("CONSUL_CACERT", "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY"):
        if environ.get(name) and not os.path.isfile(environ[name]):
            raise ConfigError(name, "", f"no such file {show(environ[name])}")
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
        ssl_verify=verify,
    )
