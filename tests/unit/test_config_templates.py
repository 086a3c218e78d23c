"""[templates.NAME], --template-spec, plugins_dir -> TemplateSpecs; each bad value named with file:line."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from basenode import config

NO_COMPONENTS = config.Flags(no_consul=True, no_haproxy=True)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "app.conf.j2").write_text("x = {{ kv('app/x', 'default') }}\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "extra.py").write_text("def context(snapshot):\n    return {}\n")
    return tmp_path


def load(tmp_path: Path, text: str, **flags) -> config.Settings:
    path = tmp_path / "basenode.toml"
    path.write_text(text.replace("DIR", str(tmp_path)))
    fields = {**NO_COMPONENTS.__dict__, "config": str(path), **flags}
    return config.load(config.Flags(**fields), {"PATH": "/usr/bin:/bin"})


def error_of(tmp_path: Path, text: str, **flags) -> str:
    with pytest.raises(config.ConfigError) as e:
        load(tmp_path, text, **flags)
    return str(e.value).replace(str(tmp_path) + "/", "")


APP = """
plugins_dir = "DIR/plugins"
[programs.web]
command = ["sleep", "100"]

[templates.app]
source = "DIR/app.conf.j2"
destination = "DIR/out/app.conf"
"""


def test_a_template_table_becomes_a_spec_with_the_documented_defaults(files):
    settings = load(files, APP)
    (spec,) = settings.templates
    assert spec.name == "app"
    assert spec.source == files / "app.conf.j2"
    assert spec.destination == files / "out" / "app.conf"
    assert spec.mode == 0o644 and spec.owner is None
    assert spec.check == () and spec.reload_command == () and not spec.shell
    assert spec.reload_program is None and spec.restart_program is None
    assert spec.reload_signal == signal.SIGHUP
    assert spec.origin.endswith("basenode.toml:7")  # the table's first key
    assert settings.plugins_dir == files / "plugins"
    assert settings.run_sync and not settings.run_haproxy


def test_every_key_of_the_contract_is_read(files):
    text = APP + (
        'mode = "0640"\n'
        'check = ["true", "{candidate}"]\n'
        'reload_program = "web"\n'
        'reload_signal = "USR1"\n'
        'plugins = ["extra"]\n'
    )
    (spec,) = load(files, text).templates
    assert spec.mode == 0o640
    assert spec.check == ("true", "{candidate}")
    assert spec.reload_program == "web" and spec.reload_signal == signal.SIGUSR1
    assert spec.plugins == ("extra",)


def test_a_command_string_is_split_like_a_shell_would_and_kept_whole_with_shell_true(files):
    (spec,) = load(files, APP + "check = \"grep -q 'x =' {candidate}\"\n").templates
    assert spec.check == ("grep", "-q", "x =", "{candidate}")
    (spec,) = load(files, APP + 'check = "test -s {candidate} && true"\nshell = true\n').templates
    assert spec.check == ("test -s {candidate} && true",) and spec.shell
    (spec,) = load(files, APP + "check = ['grep', '-q', 'a b', '{candidate}']\nshell = true\n").templates
    assert spec.check == ("grep -q 'a b' {candidate}",)  # a list's words stay words for the shell


def test_a_mode_that_is_not_octal_is_refused_with_its_line(files):
    assert error_of(files, APP + 'mode = "rw-r--r--"\n') == (
        'basenode.toml:9: templates.app.mode: expected an octal file mode like "0644", got "rw-r--r--"'
    )
    assert error_of(files, APP + 'mode = "0999"\n').startswith("basenode.toml:9: templates.app.mode:")


def test_a_destination_in_a_missing_directory_is_refused(files):
    text = APP.replace("DIR/out/app.conf", "DIR/nope/app.conf")
    assert error_of(files, text) == (
        'basenode.toml:8: templates.app.destination: directory "nope" does not exist'
    )


def test_a_missing_source_file_is_refused(files):
    text = APP.replace("app.conf.j2", "missing.j2")
    assert error_of(files, text) == 'basenode.toml:7: templates.app.source: no such file "missing.j2"'


def test_only_one_of_reload_program_restart_program_and_reload_command(files):
    text = APP + 'reload_program = "web"\nreload_command = ["true"]\n'
    assert error_of(files, text) == (
        "basenode.toml:10: templates.app.reload_command: only one of reload_program, restart_program, "
        "reload_command (also reload_program)"
    )


def test_a_reload_program_must_be_supervised(files):
    message = error_of(files, APP + 'restart_program = "nginx"\n')
    assert message.startswith(
        'basenode.toml:9: templates.app.restart_program: "nginx" is not a supervised program'
    )
    # The application COMMAND is the program "app".
    (spec,) = load(files, APP + 'reload_program = "app"\n').templates
    assert spec.reload_program == "app"


def test_reload_signal_goes_with_reload_program_only(files):
    assert error_of(files, APP + 'reload_signal = "HUP"\n') == (
        "basenode.toml:9: templates.app.reload_signal: only with reload_program"
    )


def test_a_plugin_must_exist_in_the_plugins_dir(files):
    message = error_of(files, APP + 'plugins = ["missing"]\n')
    assert message == (
        'basenode.toml:9: templates.app.plugins: no plugin "missing": plugins/missing.py not found'
    )


def test_an_unknown_key_in_a_template_is_an_error(files):
    assert error_of(files, APP + 'reload = "x"\n') == "basenode.toml:9: templates.app.reload: unknown key"


def test_two_templates_may_not_write_the_same_file(files):
    text = APP + '[templates.other]\nsource = "DIR/app.conf.j2"\ndestination = "DIR/out/app.conf"\n'
    assert error_of(files, text) == (
        'basenode.toml:10: templates.other.destination: "out/app.conf" is also written by template "app"'
    )


def test_template_spec_flags_are_named_spec1_spec2_and_add_to_the_tables(files):
    specs = (
        f"{files}/app.conf.j2:{files}/out/one.conf",
        f"{files}/app.conf.j2:{files}/out/two.conf:test -s {{candidate}}:kill -HUP 1",
    )
    settings = load(files, APP, template_specs=specs)
    assert [s.name for s in settings.templates] == ["app", "spec1", "spec2"]
    one, two = settings.templates[1:]
    assert one.check == () and one.reload_command == () and one.origin == "--template-spec"
    assert two.check == ("test", "-s", "{candidate}") and two.reload_command == ("kill", "-HUP", "1")


def test_a_bad_template_spec_flag_names_the_flag_and_the_value(files):
    assert error_of(files, "", template_specs=("only-a-source",)) == (
        '--template-spec: expected SRC:DEST[:CHECK[:RELOAD]], got "only-a-source"'
    )
    message = error_of(files, "", template_specs=(f"{files}/app.conf.j2:{files}/gone/x.conf",))
    assert (
        message == '--template-spec: "app.conf.j2:gone/x.conf": destination: directory "gone" does not exist'
    )


def test_a_template_spec_flag_whose_check_contains_a_colon_is_refused_not_mis_split(files):
    text = f"{files}/app.conf.j2:{files}/out/a.conf:curl -f http://127.0.0.1:8080/:true"
    message = error_of(files, "", template_specs=(text,))
    assert message.startswith("--template-spec: expected SRC:DEST[:CHECK[:RELOAD]], got 6 ")
    assert "http://127.0.0.1:8080/" in message and "[templates.NAME]" in message


def test_plugins_dir_follows_flag_environment_file_default(files):
    assert load(files, "").plugins_dir == config.DEFAULT_PLUGINS_DIR
    assert load(files, 'plugins_dir = "/from/file"\n').plugins_dir == Path("/from/file")
    assert load(files, 'plugins_dir = "/from/file"\n', plugins_dir="/from/flag").plugins_dir == Path(
        "/from/flag"
    )


def test_templates_alone_run_the_sync_loop_and_reserve_its_name(files):
    text = APP + '[programs.sync]\ncommand = ["sleep", "1"]\n'
    assert error_of(files, text) == "basenode.toml:10: programs.sync: name is reserved for a built-in program"


def test_the_sync_child_of_run_gets_the_template_specs_plugins_dir_and_no_haproxy():
    from basenode import cli

    flags = config.Flags(
        template_specs=("a.j2:/x/a.conf", "b.j2:/x/b.conf"), plugins_dir="/p", no_haproxy=True
    )
    argv = cli.flags_to_argv(flags)
    assert argv[argv.index("--plugins-dir") + 1] == "/p"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--template-spec"] == list(flags.template_specs)
    assert "--no-haproxy" in argv


def test_programs_a_template_reloads_and_the_app_start_after_the_first_renders(files: Path):
    from basenode import cli, topology

    reloaded = APP.replace(
        'destination = "DIR/out/app.conf"', 'destination = "DIR/out/app.conf"\nreload_program = "web"'
    )
    text = reloaded + '[programs.other]\ncommand = ["sleep", "100"]\n'
    settings = load(files, text, command=("sleep", "1"), state_dir=str(files / "state"))
    programs = {
        p.name: p for p in topology.all_programs(settings, cli.flags_to_argv(NO_COMPONENTS), first_start=True)
    }
    assert programs["sync"].ready_file == str(settings.sync_ready_file)
    assert "sync" in programs["web"].depends_on  # it reads the rendered file
    assert "sync" not in programs["other"].depends_on  # no template of its own: not held back
    assert "sync" in programs["app"].depends_on
