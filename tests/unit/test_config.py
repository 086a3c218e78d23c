"""Settings: precedence, and one-line errors that name the bad value and where it came from."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from basenode import config

NO_COMPONENTS = config.Flags(no_consul=True, no_haproxy=True)


def load_file(tmp_path: Path, text: str, flags: config.Flags = NO_COMPONENTS, env: dict | None = None):
    path = tmp_path / "basenode.toml"
    path.write_text(text)
    environ = {"PATH": "/usr/bin:/bin", **(env or {})}
    return config.load(config.Flags(**{**flags.__dict__, "config": str(path)}), environ)


def error_of(tmp_path: Path, text: str, **kw) -> str:
    with pytest.raises(config.ConfigError) as e:
        load_file(tmp_path, text, **kw)
    return str(e.value).replace(str(tmp_path) + "/", "")


def test_a_missing_default_config_file_is_not_an_error():
    settings = config.load(config.Flags(no_consul=True, no_haproxy=True), {"PATH": "/usr/bin:/bin"})
    assert settings.config_file is None or settings.config_file == config.DEFAULT_CONFIG


def test_a_missing_named_config_file_is_an_error_naming_the_flag(tmp_path):
    with pytest.raises(config.ConfigError) as e:
        config.load(config.Flags(config=str(tmp_path / "nope.toml"), no_consul=True, no_haproxy=True), {})
    assert str(e.value).startswith("--config: config file ")


def test_flag_beats_environment_beats_file_beats_default(tmp_path):
    text = 'bind = "127.0.0.3"\nstate_dir = "/tmp/from-file"\n'
    assert load_file(tmp_path, "").bind == "127.0.0.1"
    assert load_file(tmp_path, text).bind == "127.0.0.3"
    assert load_file(tmp_path, text, env={"BASENODE_BIND": "127.0.0.4"}).bind == "127.0.0.4"
    flags = config.Flags(no_consul=True, no_haproxy=True, bind="127.0.0.5")
    assert load_file(tmp_path, text, flags=flags, env={"BASENODE_BIND": "127.0.0.4"}).bind == "127.0.0.5"
    assert load_file(tmp_path, text).state_dir == Path("/tmp/from-file")


def test_bad_number_of_seconds_names_file_line_key_and_value(tmp_path):
    text = '[programs.web]\ncommand = ["sleep", "1"]\nstop_timeout = "soon"\n'
    assert error_of(tmp_path, text) == (
        'basenode.toml:3: programs.web.stop_timeout: expected a number of seconds, got "soon"'
    )


def test_unknown_key_is_an_error(tmp_path):
    assert error_of(tmp_path, 'bind = "127.0.0.1"\nbnid = "x"\n') == "basenode.toml:2: bnid: unknown key"
    text = '[programs.web]\ncommand = ["sleep", "1"]\nrestart = "always"\n'
    assert error_of(tmp_path, text) == "basenode.toml:3: programs.web.restart: unknown key"


def test_wrong_type_is_an_error(tmp_path):
    text = '[programs.web]\ncommand = "sleep 1"\n'
    assert error_of(tmp_path, text) == (
        'basenode.toml:2: programs.web.command: expected a list of strings, got "sleep 1"'
    )


def test_command_not_found_is_an_error(tmp_path):
    text = '[programs.web]\ncommand = ["no-such-binary-xyz"]\n'
    assert error_of(tmp_path, text) == (
        'basenode.toml:2: programs.web.command: command "no-such-binary-xyz" not found'
    )


def test_dependency_cycle_is_an_error(tmp_path):
    text = (
        '[programs.a]\ncommand = ["true"]\ndepends_on = ["b"]\n'
        '[programs.b]\ncommand = ["true"]\ndepends_on = ["a"]\n'
    )
    assert error_of(tmp_path, text) == "basenode.toml:3: programs.a.depends_on: dependency cycle: a -> b -> a"


def test_unknown_dependency_is_an_error(tmp_path):
    text = '[programs.a]\ncommand = ["true"]\ndepends_on = ["nope"]\n'
    assert error_of(tmp_path, text) == 'basenode.toml:3: programs.a.depends_on: unknown program "nope"'


def test_invalid_toml_names_the_line(tmp_path):
    assert error_of(tmp_path, 'bind = "127.0.0.1"\nstate_dir = \n').startswith(
        "basenode.toml:2: invalid TOML"
    )


def test_program_fields_are_read(tmp_path):
    text = (
        '[programs.web]\ncommand = ["sleep", "1"]\nautorestart = "always"\nstartsecs = 0.5\n'
        'startretries = 7\nstop_signal = "INT"\nstop_timeout = 3\nrequired = true\n'
        'forward_signals = ["HUP"]\nenvironment = { A = "1" }\ndirectory = "/"\n'
    )
    (web,) = load_file(tmp_path, text).programs
    assert web == config.Program(
        name="web",
        command=("sleep", "1"),
        environment=(("A", "1"),),
        directory="/",
        autorestart="always",
        startsecs=0.5,
        startretries=7,
        stop_signal=signal.SIGINT,
        stop_timeout=3.0,
        required=True,
        forward_signals=(signal.SIGHUP,),
    )


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ("web", 'BASENODE_ROUTES: route "web": expected service:port[/mode]'),
        ("web:x", 'BASENODE_ROUTES: route "web:x": expected a port 1-65535, got "x"'),
        ("web:70000", 'BASENODE_ROUTES: route "web:70000": expected a port 1-65535, got "70000"'),
        ("web:80/udp", 'BASENODE_ROUTES: route "web:80/udp": mode must be tcp or http, got "udp"'),
        ("we b:80", 'BASENODE_ROUTES: route "we b:80": service name must match [A-Za-z0-9._-]{1,128}'),
        ("a:80,b:80", 'BASENODE_ROUTES: route "b": port 80 already used by "a"'),
    ],
)
def test_bad_routes_from_the_environment_name_the_variable_and_the_route(routes, message):
    with pytest.raises(config.ConfigError) as e:
        config.load(NO_COMPONENTS, {"BASENODE_ROUTES": routes})
    assert str(e.value) == message


def test_routes_parse_with_modes_and_the_flag_wins_over_the_environment():
    settings = config.load(
        config.Flags(no_consul=True, no_haproxy=True, routes="postgresql:9301,web:9302/http"),
        {"BASENODE_ROUTES": "other:1"},
    )
    assert [(r.service, r.port, r.mode) for r in settings.routes] == [
        ("postgresql", 9301, "tcp"),
        ("web", 9302, "http"),
    ]


def test_routes_from_the_file_with_a_tag(tmp_path):
    text = '[routes.web]\nport = 9302\nmode = "http"\ntag = "v2"\n'
    (route,) = load_file(tmp_path, text).routes
    assert (route.service, route.port, route.mode, route.tag) == ("web", 9302, "http", "v2")


def test_bad_bind_and_status_addr_name_their_flag():
    with pytest.raises(config.ConfigError, match=r'^--bind: expected an IP address, got "0.0.0"$'):
        config.load(config.Flags(no_consul=True, no_haproxy=True, bind="0.0.0"), {})
    with pytest.raises(config.ConfigError, match=r"^BASENODE_STATUS_ADDR: expected a port"):
        config.load(NO_COMPONENTS, {"BASENODE_STATUS_ADDR": "127.0.0.1:http"})


def test_consul_variables_are_read_as_the_consul_cli_reads_them(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    settings = config.load(
        NO_COMPONENTS,
        {
            "CONSUL_HTTP_ADDR": "https://127.0.0.1:8501",
            "CONSUL_HTTP_TOKEN_FILE": str(token_file),
            "CONSUL_HTTP_SSL_VERIFY": "false",
        },
    )
    http = settings.consul_http
    assert (http.scheme, http.host_port, http.token, http.ssl_verify) == (
        "https",
        ("127.0.0.1", 8501),
        "s3cret",
        False,
    )
    assert "s3cret" not in repr(settings)  # tokens never reach a log line through repr


def test_agent_variables(tmp_path):
    settings = config.load(
        NO_COMPONENTS,
        {
            "CONSUL_JOIN": "10.0.0.1, consul.example",
            "CONSUL_SERVER": "1",
            "CONSUL_BOOTSTRAP_EXPECT": "3",
            "CONSUL_DATACENTER": "eu1",
            "CONSUL_ENCRYPT": "key",
        },
    )
    agent = settings.agent
    assert (agent.join, agent.server, agent.bootstrap_expect, agent.datacenter) == (
        ("10.0.0.1", "consul.example"),
        True,
        3,
        "eu1",
    )
    assert "key" not in repr(agent)
    with pytest.raises(config.ConfigError, match=r'^CONSUL_SERVER: expected 1/0 or true/false, got "maybe"$'):
        config.load(NO_COMPONENTS, {"CONSUL_SERVER": "maybe"})


def test_missing_haproxy_binary_names_its_source():
    with pytest.raises(config.ConfigError) as e:
        config.load(config.Flags(no_consul=True, haproxy_bin="/nonexistent/haproxy"), {})
    assert (
        str(e.value) == '--haproxy-bin: haproxy binary "/nonexistent/haproxy" not found (or use --no-haproxy)'
    )


def test_signals_that_cannot_be_caught_cannot_be_forwarded(tmp_path):
    text = '[programs.web]\ncommand = ["true"]\nforward_signals = ["HUP", "KILL"]\n'
    assert error_of(tmp_path, text) == (
        'basenode.toml:3: programs.web.forward_signals: SIGKILL cannot be forwarded, got ["HUP", "KILL"]'
    )


def test_negative_durations_are_refused(tmp_path):
    text = '[programs.web]\ncommand = ["true"]\nstartsecs = -1\n'
    assert (
        error_of(tmp_path, text)
        == "basenode.toml:3: programs.web.startsecs: expected a number of seconds, got -1"
    )


def test_haproxy_log_is_on_by_default_and_each_layer_can_switch_it(tmp_path):
    assert load_file(tmp_path, "").haproxy_log is True
    assert load_file(tmp_path, "haproxy_log = false\n").haproxy_log is False
    env_on = {"BASENODE_HAPROXY_LOG": "on"}
    assert load_file(tmp_path, "haproxy_log = false\n", env=env_on).haproxy_log is True
    flag_off = config.Flags(no_consul=True, no_haproxy=True, haproxy_log="off")
    assert load_file(tmp_path, "", flags=flag_off, env=env_on).haproxy_log is False


def test_a_bad_haproxy_log_switch_names_its_source(tmp_path):
    assert error_of(tmp_path, 'haproxy_log = "yes"\n') == (
        'basenode.toml:1: haproxy_log: expected true or false, got "yes"'
    )
    with pytest.raises(
        config.ConfigError, match=r'^BASENODE_HAPROXY_LOG: expected 1/0 or true/false, got "x"$'
    ):
        config.load(NO_COMPONENTS, {"BASENODE_HAPROXY_LOG": "x"})
    with pytest.raises(config.ConfigError, match=r'^--haproxy-log: expected on or off, got "loud"$'):
        config.load(config.Flags(no_consul=True, no_haproxy=True, haproxy_log="loud"), {})
