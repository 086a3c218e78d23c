"""consul.py's and agent.py's pure parts: the agent's generated config, its command line, the client, join."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from basenode import config
from basenode.agent import agent_config, agent_program
from basenode.config import Agent, ConsulHTTP, Settings
from basenode.consul import join_addresses, join_command, make_client

SECRET_TOKEN = "11111111-2222-3333-4444-555555555555"
SECRET_KEY = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="


def secret_settings(**http):
    return Settings(
        state_dir=Path("/tmp/state"),
        consul_http=ConsulHTTP(addr="127.0.0.1:18500", token=SECRET_TOKEN, **http),
        agent=Agent(
            join=("10.0.0.2", "consul.example"),
            datacenter="dc2",
            encrypt=SECRET_KEY,
            node_name="n1",
            extra_args=("-bind=10.0.0.9",),
        ),
    )


def test_the_agent_config_carries_node_datacenter_join_ports_and_secrets():
    config = agent_config(secret_settings())
    assert config["node_name"] == "n1"
    assert config["datacenter"] == "dc2"
    assert config["data_dir"] == "/tmp/state/consul"
    assert config["client_addr"] == "127.0.0.1"
    assert config["retry_join"] == ["10.0.0.2", "consul.example"]
    assert config["ports"] == {"http": 18500}
    assert config["encrypt"] == SECRET_KEY
    assert config["acl"]["tokens"]["agent"] == SECRET_TOKEN
    assert config["server"] is False and "bootstrap_expect" not in config
    json.dumps(config)  # it is written as JSON


def test_a_server_agent_bootstraps_with_the_expected_count():
    settings = Settings(agent=Agent(server=True, bootstrap_expect=3))
    config = agent_config(settings)
    assert config["server"] is True and config["bootstrap_expect"] == 3


def test_tls_settings_reach_the_agent_config_and_move_the_port_to_https():
    config = agent_config(secret_settings(cacert="/ca.pem", client_cert="/c.pem", client_key="/k.pem"))
    assert config["ports"] == {"https": 18500, "http": -1}
    assert (config["ca_file"], config["cert_file"], config["key_file"]) == ("/ca.pem", "/c.pem", "/k.pem")


def test_secrets_never_reach_the_agent_command_line():
    program = agent_program(secret_settings())
    line = " ".join(program.command)
    assert program.command[:3] == ("consul", "agent", "-config-file=/tmp/state/consul.json")
    assert program.command[-1] == "-bind=10.0.0.9"
    assert SECRET_TOKEN not in line and SECRET_KEY not in line
    assert SECRET_TOKEN not in repr(program)


def test_the_token_given_wins_over_the_environment_and_is_not_in_the_client_repr(monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-env")
    client = make_client(ConsulHTTP(addr="https://127.0.0.1:8501", token=SECRET_TOKEN, ssl_verify=False))
    assert client.token == SECRET_TOKEN
    assert client.http.base_uri == "https://127.0.0.1:8501"
    assert client.http.verify is False


def test_join_addresses_come_from_arguments_then_consul_join_then_link_variables():
    links = {
        "CONSULSERVER_1_PORT_8500_TCP_ADDR": "172.17.0.2",
        "OTHER_PORT_8301_TCP_ADDR": "172.17.0.3",
        "PATH": "/x",
    }
    no_components = config.Flags(no_consul=True, no_haproxy=True)
    with_join = config.load(no_components, {**links, "CONSUL_JOIN": "10.0.0.9"})
    assert join_addresses(with_join, ["10.0.0.1:8301"]) == (("10.0.0.1:8301",), "arguments")
    assert join_addresses(with_join, []) == (("10.0.0.9",), "CONSUL_JOIN")
    addresses, source = join_addresses(config.load(no_components, links), [])
    assert addresses == ("172.17.0.3", "172.17.0.2")  # the serf port's link first
    assert source == "link variables OTHER_PORT_8301_TCP_ADDR, CONSULSERVER_1_PORT_8500_TCP_ADDR"
    assert join_addresses(config.load(no_components, {}), []) == ((), "link variables ")


@pytest.mark.parametrize("address", ["10.0.0.1/../../kv/x", "a b", "host?x=1", ""])
def test_a_join_address_that_is_not_host_port_is_refused_by_name(address):
    with pytest.raises(config.ConfigError, match="arguments: expected host or host:port to join"):
        join_addresses(Settings(), [address])
    with pytest.raises(config.ConfigError, match=r"^CONSUL_JOIN: expected host or host:port to join"):
        config.load(config.Flags(no_consul=True, no_haproxy=True), {"CONSUL_JOIN": f"10.0.0.1,{address}x y"})


def test_join_with_nothing_to_join_says_where_it_looked(capsys):
    assert join_command(Settings(), [], timeout=1) == 2
    assert "CONSUL_JOIN" in capsys.readouterr().err
