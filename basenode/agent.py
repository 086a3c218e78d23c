"""The Consul agent basenode runs: its generated config and its supervised program.

Kept apart from consul.py (the HTTP client) so that PID 1, which only starts the agent, never
imports py-consul and requests.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any, Dict

from .config import Program, Settings
from .files import write_atomic

DEFAULT_BIND_TEMPLATE = "{{ GetPrivateIP }}"  # go-sockaddr: the container's one private address


def agent_config(settings: Settings) -> Dict[str, Any]:
    """The Consul agent's JSON config. Holds secrets (encrypt key, token): written 0600, never logged.

    Secrets live only here, never on a command line, where any process could read them in ps.
    """
    agent = settings.agent
    http = settings.consul_http
    _, http_port = http.host_port
    config: Dict[str, Any] = {
        "data_dir": str(settings.consul_data_dir),
        "client_addr": "127.0.0.1",
        # Consul picks the address to gossip on; with more than one private address it refuses to start,
        # and Agent.extra_args (-bind=...) override this on the command line.
        "bind_addr": DEFAULT_BIND_TEMPLATE,
        "disable_update_check": True,
        "enable_script_checks": False,
        "ports": {"https": http_port, "http": -1} if http.scheme == "https" else {"http": http_port},
        "retry_join": list(agent.join),
        "server": agent.server,
        # No `limits`: Consul's default of 200 connections per client address stands. The watch holds
        # at most watch.max_conns (default 100) of them; extra_args can raise the agent's limit
        # (-hcl='limits { http_max_conns_per_client = 1000 }') for a larger watch.max_conns.
    }
    if agent.node_name:
        config["node_name"] = agent.node_name
    if agent.datacenter:
        config["datacenter"] = agent.datacenter
    if agent.encrypt:
        config["encrypt"] = agent.encrypt
    if agent.server:
        config["bootstrap_expect"] = agent.bootstrap_expect or 1
        config["ui"] = False
    if http.token:
        # The agent uses it for its own requests (anti-entropy, and ours when they carry no token).
        config["acl"] = {"tokens": {"agent": http.token, "default": http.token}}
    if http.cacert:
        config["ca_file"] = http.cacert
        config["verify_outgoing"] = http.ssl_verify
    if http.client_cert:
        config["cert_file"] = http.client_cert
    if http.client_key:
        config["key_file"] = http.client_key
    return config


def agent_config_path(settings: Settings) -> Path:
    return settings.state_dir / "consul.json"


def write_agent_config(settings: Settings) -> Path:
    """Write the agent's config (0600, in the 0700 state dir) where agent_program() points."""
    path = agent_config_path(settings)
    write_atomic(path, json.dumps(agent_config(settings), indent=1, sort_keys=True) + "\n", mode=0o600)
    return path


def agent_program(settings: Settings) -> Program:
    """`consul agent -config-file <state_dir>/consul.json [extra args]` as a supervised program."""
    return Program(
        name="consul",
        command=(
            settings.consul_bin,
            "agent",
            f"-config-file={agent_config_path(settings)}",
            *settings.agent.extra_args,
        ),
        autorestart="always",
        startsecs=0.5,  # the agent fails fast on a bad config; waiting longer only delays the start
        # SIGINT makes a client agent leave the cluster gracefully; the stop timeout covers the leave.
        stop_signal=signal.SIGINT,
        stop_timeout=10.0,
    )
