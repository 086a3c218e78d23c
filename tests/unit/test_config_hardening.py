"""Issue 12's settings: the application's user and group, and which secrets a child keeps."""

from __future__ import annotations

import dataclasses

import pytest

from basenode import childenv, cli, config, topology
from tests.unit.test_config import NO_COMPONENTS, error_of, load_file


def test_app_user_and_group_flag_beats_environment_beats_file(tmp_path):
    text = 'app_user = "daemon"\napp_group = "daemon"\napp_pass_env = ["CONSUL_HTTP_TOKEN"]\n'
    assert load_file(tmp_path, text).app_user == "daemon"
    settings = load_file(tmp_path, text, env={"BASENODE_APP_USER": "nobody", "BASENODE_APP_PASS_ENV": "A, B"})
    assert (settings.app_user, settings.app_group, settings.app_pass_env) == ("nobody", "daemon", ("A", "B"))
    flags = dataclasses.replace(NO_COMPONENTS, app_user="root", app_group="0")
    settings = load_file(tmp_path, text, flags=flags, env={"BASENODE_APP_USER": "nobody"})
    assert (settings.app_user, settings.app_group) == ("root", "0")


@pytest.mark.parametrize(
    "text, expected",
    [
        ('app_user = "no-such-user"\n', 'basenode.toml:1: app_user: no such user "no-such-user"'),
        ('app_group = "no-such-group"\n', 'basenode.toml:1: app_group: no such group "no-such-group"'),
        ('app_pass_env = ["A-B"]\n', "basenode.toml:1: app_pass_env: expected variable names, got 'A-B'"),
        (
            '[programs.w]\ncommand = ["true"]\ngroup = "nope-group"\n',
            'basenode.toml:3: programs.w.group: no such group "nope-group"',
        ),
    ],
)
def test_bad_app_and_program_accounts_are_refused_naming_the_key(tmp_path, text, expected):
    assert error_of(tmp_path, text) == expected


def test_a_program_keeps_only_the_secrets_it_names(tmp_path):
    text = '[programs.w]\ncommand = ["true"]\ngroup = "daemon"\npass_env = ["CONSUL_ENCRYPT"]\n'
    program = load_file(tmp_path, text).programs[0]
    assert (program.group, program.pass_env) == ("daemon", ("CONSUL_ENCRYPT",))
    environ = {"PATH": "/bin", **dict.fromkeys(childenv.SECRET_ENV, "s")}
    assert childenv.inherited(environ, program.pass_env) == {"PATH": "/bin", "CONSUL_ENCRYPT": "s"}


def test_basenodes_own_children_keep_the_secrets_and_the_app_and_haproxy_do_not(tmp_path):
    flags = config.Flags(no_consul=True, command=("true",), app_user="nobody")
    settings = config.Settings(
        state_dir=tmp_path / "state",
        run_consul=False,
        command=("true",),
        app_user="nobody",
        services=(config.Service(name="web", port=80),),
    )
    programs = {
        p.name: p for p in topology.all_programs(settings, cli.flags_to_argv(flags), first_start=True)
    }
    for name in ("sync", "register"):
        assert set(programs[name].pass_env) == childenv.SECRET_ENV, name
    assert programs["haproxy"].pass_env == () and programs["app"].pass_env == ()
    assert programs["app"].user == "nobody"


def test_secret_env_names_what_basenode_reads_secrets_from():
    names = {"CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_HTTP_AUTH", "CONSUL_ENCRYPT"}
    assert names | {"CONSUL_CLIENT_KEY"} <= childenv.SECRET_ENV
