"""The application's settings: how its output reaches basenode's, and (below) readiness keys."""

from __future__ import annotations

from basenode import config
from tests.unit.test_config import error_of, load_file


def test_app_output_is_inherit_by_default_and_flag_beats_environment_beats_file(tmp_path):
    assert load_file(tmp_path, "").app_output == "inherit"
    assert load_file(tmp_path, 'app_output = "prefix"\n').app_output == "prefix"
    env = {"BASENODE_APP_OUTPUT": "json"}
    assert load_file(tmp_path, 'app_output = "prefix"\n', env=env).app_output == "json"
    flag = config.Flags(no_consul=True, no_haproxy=True, app_output="inherit")
    assert load_file(tmp_path, 'app_output = "prefix"\n', flags=flag, env=env).app_output == "inherit"


def test_a_bad_app_output_names_its_source(tmp_path):
    assert error_of(tmp_path, 'app_output = "raw"\n') == (
        'basenode.toml:1: app_output: expected inherit, prefix or json, got "raw"'
    )
    assert error_of(tmp_path, "", env={"BASENODE_APP_OUTPUT": "tee"}) == (
        'BASENODE_APP_OUTPUT: expected inherit, prefix or json, got "tee"'
    )


def test_the_application_program_carries_its_output_mode(tmp_path):
    from basenode import cli, topology

    flags = config.Flags(no_consul=True, no_haproxy=True, command=("true",))
    for mode in config.APP_OUTPUTS:
        settings = load_file(tmp_path, f'app_output = "{mode}"\n', flags=flags)
        app = [
            p for p in topology.all_programs(settings, cli.flags_to_argv(flags), first_start=True) if p.main
        ]
        assert [(p.name, p.output) for p in app] == [("app", mode)]


# --- readiness keys: [programs.NAME] and [app] -------------------------------------------------


def test_each_readiness_key_of_a_program_is_read(tmp_path):
    cases = {
        "ready_tcp = 8080": ("ready_tcp", ("127.0.0.1", 8080)),
        'ready_tcp = "[::1]:8080"': ("ready_tcp", ("::1", 8080)),
        'ready_tcp = "localhost:81"': ("ready_tcp", ("127.0.0.1", 81)),
        'ready_http = "http://127.0.0.1:8080/health"': ("ready_http", "http://127.0.0.1:8080/health"),
        'ready_command = ["true"]': ("ready_command", ("true",)),
        'ready_file = "/tmp/up"': ("ready_file", "/tmp/up"),
    }
    for line, (key, value) in cases.items():
        settings = load_file(tmp_path, f'[programs.db]\ncommand = ["sleep", "1"]\n{line}\n')
        assert getattr(settings.programs[0], key) == value, line


def test_bad_readiness_values_name_the_key_and_the_value(tmp_path):
    head = '[programs.db]\ncommand = ["sleep", "1"]\n'
    cases = {
        "ready_tcp = 0": "basenode.toml:3: programs.db.ready_tcp: expected a port 1-65535, got 0",
        'ready_tcp = "db.example:80"': (
            'basenode.toml:3: programs.db.ready_tcp: expected an IP address, got "db.example"'
        ),
        'ready_http = "https://127.0.0.1/"': (
            'basenode.toml:3: programs.db.ready_http: expected an http:// URL, got "https://127.0.0.1/"'
        ),
        'ready_http = "http://db.example/"': (
            "basenode.toml:3: programs.db.ready_http: expected an http:// URL on an IP address or "
            'localhost, got "http://db.example/"'
        ),
        "ready_command = []": (
            "basenode.toml:3: programs.db.ready_command: expected a command: a non-empty list of strings"
        ),
        'ready_command = ["no-such-check-xyz"]': (
            'basenode.toml:3: programs.db.ready_command: command "no-such-check-xyz" not found'
        ),
        'ready_command = "true"': (
            'basenode.toml:3: programs.db.ready_command: expected a list of strings, got "true"'
        ),
    }
    for line, message in cases.items():
        assert error_of(tmp_path, head + line + "\n") == message, line


def test_a_program_has_at_most_one_readiness_condition(tmp_path):
    text = '[programs.db]\ncommand = ["sleep", "1"]\nready_tcp = 5432\nready_file = "/tmp/up"\n'
    assert error_of(tmp_path, text) == (
        "basenode.toml:3: programs.db.ready_tcp: only one of ready_file, ready_tcp, ready_http, "
        "ready_command (also ready_file)"
    )


def test_the_app_table_sets_the_applications_readiness_and_the_environment_replaces_it(tmp_path):
    assert load_file(tmp_path, "").app == config.App()
    app = load_file(tmp_path, '[app]\nstartsecs = 1.5\nready_http = "http://localhost:8080/ready"\n').app
    assert (app.startsecs, app.ready_http, app.ready_tcp) == (1.5, "http://localhost:8080/ready", None)
    env = {"BASENODE_APP_READY_TCP": "9000"}
    app = load_file(tmp_path, '[app]\nready_http = "http://localhost:8080/ready"\n', env=env).app
    assert (app.ready_tcp, app.ready_http) == (("127.0.0.1", 9000), None)
    assert error_of(tmp_path, "", env={"BASENODE_APP_READY_TCP": "port"}) == (
        'BASENODE_APP_READY_TCP: expected a port 1-65535, got "port"'
    )
    assert error_of(tmp_path, "[app]\nready = 1\n") == "basenode.toml:2: app.ready: unknown key"


def test_the_application_program_carries_the_app_tables_readiness(tmp_path):
    from basenode import cli, topology

    flags = config.Flags(no_consul=True, no_haproxy=True, command=("true",))
    settings = load_file(tmp_path, '[app]\nstartsecs = 2\nready_command = ["true"]\n', flags=flags)
    (app,) = [
        p for p in topology.all_programs(settings, cli.flags_to_argv(flags), first_start=True) if p.main
    ]
    assert (app.startsecs, app.ready_command) == (2.0, ("true",))
