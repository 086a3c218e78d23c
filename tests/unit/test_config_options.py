"""The option table: every option is accepted as a flag, a variable and a file key, with the documented
precedence (flag > variable > file > default), and the README's options table is the table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import pytest

from basenode import cli, config

ROOT = Path(__file__).resolve().parents[2]

# Per option: what Settings shows of it, then for each layer (None: the option has no such layer) the
# value given there and what it becomes: the file's as a TOML value, the variable's as text, the flag's
# as the words after the flag. Every layer's value differs from the others and from the default.
Layer = Optional[Tuple[Any, Any]]
SAMPLES: Dict[str, Tuple[Callable[[config.Settings], Any], Layer, Layer, Layer]] = {
    "config": (
        lambda s: s.config_file,
        None,
        ("{tmp}/env.toml", Path("{tmp}/env.toml")),
        (["{tmp}/flag.toml"], Path("{tmp}/flag.toml")),
    ),
    "state_dir": (
        lambda s: s.state_dir,
        ('"/s/f"', Path("/s/f")),
        ("/s/e", Path("/s/e")),
        (["/s/g"], Path("/s/g")),
    ),
    "routes": (
        lambda s: [(r.service, r.port) for r in s.routes],
        ("{ c = { port = 1003 } }", [("c", 1003)]),
        ("b:1002", [("b", 1002)]),
        (["a:1001"], [("a", 1001)]),
    ),
    "bind": (
        lambda s: s.bind,
        ('"127.0.0.3"', "127.0.0.3"),
        ("127.0.0.4", "127.0.0.4"),
        (["127.0.0.5"], "127.0.0.5"),
    ),
    "template": (
        lambda s: s.template,
        ('"{tmp}/f.j2"', Path("{tmp}/f.j2")),
        ("{tmp}/e.j2", Path("{tmp}/e.j2")),
        (["{tmp}/g.j2"], Path("{tmp}/g.j2")),
    ),
    "no_consul": (lambda s: s.run_consul, ("false", False), ("0", True), ([], False)),
    "no_haproxy": (lambda s: s.run_haproxy, ("false", False), ("0", True), ([], False)),
    "consul_bin": (lambda s: s.consul_bin, ('"/c/f"', "/c/f"), ("/c/e", "/c/e"), (["/c/g"], "/c/g")),
    "haproxy_bin": (lambda s: s.haproxy_bin, ('"/h/f"', "/h/f"), ("/h/e", "/h/e"), (["/h/g"], "/h/g")),
    "haproxy_log": (lambda s: s.haproxy_log, ("false", False), ("on", True), (["off"], False)),
    "status_addr": (
        lambda s: s.status_addr,
        ('"127.0.0.1:1"', ("127.0.0.1", 1)),
        ("127.0.0.1:2", ("127.0.0.1", 2)),
        (["127.0.0.1:3"], ("127.0.0.1", 3)),
    ),
    "health_max_age": (lambda s: s.health_max_age, ("7", 7.0), ("8", 8.0), (["9"], 9.0)),
    "log_format": (lambda s: s.log_format, ('"json"', "json"), ("text", "text"), (["json"], "json")),
    "log_level": (lambda s: s.log_level, ('"debug"', "debug"), ("WARNING", "warning"), (["error"], "error")),
    "app_output": (lambda s: s.app_output, ('"prefix"', "prefix"), ("json", "json"), (["prefix"], "prefix")),
    "include_warning": (lambda s: s.watch.include_warning, ("true", True), ("0", False), ([], True)),
    "watch_max_conns": (lambda s: s.watch.max_conns, ("10", 10), ("20", 20), (["30"], 30)),
    "apply_mode": (
        lambda s: s.watch.apply_mode,
        ('"reload"', "reload"),
        ("runtime", "runtime"),
        (["reload"], "reload"),
    ),
    "drain": (lambda s: s.drain, ("4", 4.0), ("5", 5.0), (["6"], 6.0)),
    "drain_quiet": (lambda s: s.drain_quiet, ("0.1", 0.1), ("0.2", 0.2), (["0.3"], 0.3)),
    "template_specs": (
        lambda s: [(t.name, t.destination) for t in s.templates],
        None,
        None,
        (["{tmp}/f.j2:{tmp}/out.conf"], [("spec1", Path("{tmp}/out.conf"))]),
    ),
    "kv_route_ports": (
        lambda s: s.kv_route_ports,
        ('"2000-3000"', (2000, 3000)),
        ("4000-5000", (4000, 5000)),
        (["6000-7000"], (6000, 7000)),
    ),
    "kv_route_limit": (lambda s: s.kv_route_limit, ("1", 1), ("2", 2), (["3"], 3)),
    "plugins_dir": (
        lambda s: s.plugins_dir,
        ('"/p/f"', Path("/p/f")),
        ("/p/e", Path("/p/e")),
        (["/p/g"], Path("/p/g")),
    ),
    "app_user": (lambda s: s.app_user, ('"daemon"', "daemon"), ("nobody", "nobody"), (["root"], "root")),
    "app_group": (lambda s: s.app_group, ('"daemon"', "daemon"), ("nogroup", "nogroup"), (["0"], "0")),
    "template_env": (lambda s: s.template_env, ('["A"]', ("A",)), ("B, C", ("B", "C")), (["D"], ("D",))),
    "app_pass_env": (lambda s: s.app_pass_env, ('["A"]', ("A",)), ("B, C", ("B", "C")), (["D"], ("D",))),
}


def toml_line(key: str, value: str) -> str:
    section, _, name = key.rpartition(".")
    return f"[{section}]\n{name} = {value}\n" if section else f"{key} = {value}\n"


def filled(value: Any, tmp: Path) -> Any:
    """`value` with {tmp} replaced, inside lists, tuples and paths too."""
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp))
    if isinstance(value, Path):
        return Path(filled(str(value), tmp))
    if isinstance(value, (list, tuple)):
        return type(value)(filled(v, tmp) for v in value)
    return value


def load(
    tmp: Path, option: config.Option, file: str = "", env: Optional[dict] = None, flag: Optional[list] = None
) -> config.Settings:
    """Settings from a config file holding `file`, the variables `env` and the option's flag followed by
    the words `flag` (None: no flag), on the command line as a user gives them."""
    path = tmp / "basenode.toml"
    path.write_text(file)
    switches = {"--no-consul": ["--consul-bin", "true"], "--no-haproxy": ["--haproxy-bin", "true"]}
    argv = [name for name in switches if name != option.flag]
    argv += switches.get(option.flag or "", [])
    if option.name != "config":
        argv += ["--config", str(path)]
    if flag is not None:
        argv += [option.flag or "", *flag]
    args = cli.build_parser().parse_args(["check", *argv])
    return config.load(cli.flags_from(args, ()), {"PATH": "/usr/bin:/bin", **(env or {})})


def test_every_option_in_the_table_has_samples_here():
    assert [option.name for option in config.OPTIONS] == list(SAMPLES)


@pytest.mark.parametrize("option", config.OPTIONS, ids=lambda option: option.name)
def test_every_option_is_accepted_as_flag_variable_and_file_key_flag_first(tmp_path, option):
    for name in ("env.toml", "flag.toml", "f.j2", "e.j2", "g.j2"):
        (tmp_path / name).write_text("")
    getter, in_file, in_env, in_flag = filled(SAMPLES[option.name], tmp_path)
    assert (in_file is None, in_env is None, in_flag is None) == (
        option.key is None,
        option.variable is None,
        option.flag is None,
    )
    default = getter(config.Settings())
    assert getter(load(tmp_path, option)) == default
    file = toml_line(option.key, in_file[0]) if in_file else ""
    env = {option.variable: in_env[0]} if in_env else {}
    flag = in_flag[0] if in_flag else None
    if in_file:
        assert getter(load(tmp_path, option, file=file)) == in_file[1] != default
    if in_env:
        assert getter(load(tmp_path, option, file=file, env=env)) == in_env[1] != (in_file or (default,))[-1]
    assert getter(load(tmp_path, option, file=file, env=env, flag=flag)) == in_flag[1] != default


def test_the_sync_childs_argv_gives_the_same_flags_again(tmp_path):
    argv = [word for option in config.OPTIONS for word in (option.flag, *SAMPLES[option.name][3][0])]
    flags = cli.flags_from(cli.build_parser().parse_args(["run", *filled(argv, tmp_path)]), ("app",))
    assert all(getattr(flags, option.name) not in (None, False, ()) for option in config.OPTIONS)
    again = cli.build_parser().parse_args(["sync", *cli.flags_to_argv(flags)])
    assert cli.flags_from(again, ("app",)) == flags


def test_the_readme_options_table_is_the_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert config.readme_table() in readme, "run scripts/readme_options.py to write the table into README.md"


# Per option whose value can be wrong: a bad value as TOML (or a whole table), and as text (flag and
# variable).
BAD = {
    "routes": ('[routes.c]\nport = "x"\n', "web:x"),  # a table: an inline one has no line of its own
    "bind": ('"0.0.0"', "0.0.0"),
    "no_consul": ('"no"', "maybe"),
    "haproxy_log": ('"yes"', "loud"),
    "status_addr": ('"here"', "here"),
    "health_max_age": ('"soon"', "soon"),
    "log_format": ('"xml"', "xml"),
    "watch_max_conns": ("1", "1"),
    "apply_mode": ('"restart"', "restart"),
    "kv_route_ports": ('"9100-9000"', "9100-9000"),
    "kv_route_limit": ("-1", "many"),
    "app_user": ('"no-such-user"', "no-such-user"),
    "template_env": ('["A-B"]', "A-B"),
}


@pytest.mark.parametrize("name", BAD)
def test_a_bad_value_in_any_layer_is_named_with_its_source(tmp_path, name):
    option = config.OPTIONS[[o.name for o in config.OPTIONS].index(name)]
    in_file, as_text = BAD[name]
    path = tmp_path / "basenode.toml"
    path.write_text(in_file if "\n" in in_file else toml_line(option.key, in_file))
    base = {switch: True for switch in ("no_consul", "no_haproxy") if switch != name}
    base["config"] = str(path)
    with pytest.raises(config.ConfigError) as e:
        config.load(config.Flags(**base), {})
    assert e.value.source.startswith(f"{path}:") and e.value.key.startswith(option.key), str(e.value)
    flagged = {**base, name: as_text if option.kind.action == "store" else True}
    for flags, env, source in (
        (config.Flags(**{**base, "config": os.devnull}), {option.variable: as_text}, option.variable),
        (config.Flags(**{**flagged, "config": os.devnull}), {}, option.flag),
    ):
        if name == "no_consul" and source == option.flag:
            continue  # a bare switch: nothing to get wrong
        with pytest.raises(config.ConfigError) as e:
            config.load(flags, env)
        assert str(e.value).startswith(f"{source}: "), str(e.value)
        assert as_text in str(e.value), str(e.value)
