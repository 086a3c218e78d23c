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
    from basenode import cli

    flags = config.Flags(no_consul=True, no_haproxy=True, command=("true",))
    for mode in config.APP_OUTPUTS:
        settings = load_file(tmp_path, f'app_output = "{mode}"\n', flags=flags)
        app = [p for p in cli.all_programs(settings, flags, first_start=True) if p.main]
        assert [(p.name, p.output) for p in app] == [("app", mode)]
