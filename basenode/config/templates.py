"""Templates for other files: `[templates.NAME]` tables and `--template-spec` flags -> TemplateSpecs."""

from __future__ import annotations

import os
import re
import shlex
import signal
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple

from .errors import ConfigError, show
from .file import FileValues, Table, check_trusted
from .model import PLUGIN_NAME_RE, TEMPLATE_NAME_RE, TemplateSpec
from .programs import pass_env_names
from .values import text_list as _text_list

TEMPLATE_KEYS = (
    "source", "destination", "mode", "owner", "check", "shell", "reload_program", "reload_signal",
    "restart_program", "reload_command", "plugins", "pass_env",
)  # fmt: skip


def parse_mode(value: Any) -> int:
    """'0644', '644' or the TOML integer 0o644 -> 0o644. Raises ValueError."""
    if isinstance(value, str) and re.match(r"^0?[0-7]{3,4}$", value.strip()):
        return int(value.strip(), 8)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777:
        return value
    raise ValueError(f'expected an octal file mode like "0644", got {show(value)}')


def parse_owner(value: Any) -> Tuple[str, Optional[str]]:
    """'user[:group]' -> (user, group or None); both must exist here. Raises ValueError."""
    import grp
    import pwd

    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected user or user:group, got {show(value)}")
    user, _, group = value.strip().partition(":")
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"no such user {show(user)}") from None
    if group:
        try:
            grp.getgrnam(group)
        except KeyError:
            raise ValueError(f"no such group {show(group)}") from None
    return user, group or None


def parse_command(value: Any, shell: bool) -> Tuple[str, ...]:
    """A check or reload command: an argv list, or a string split with shlex (kept whole when shell)."""
    if isinstance(value, str):
        if shell:
            return (value,) if value.strip() else ()
        try:
            return tuple(shlex.split(value))
        except ValueError as e:
            raise ValueError(f"cannot split {show(value)}: {e}") from None
    argv = _text_list(value)
    return (" ".join(_shell_word(word) for word in argv),) if shell and argv else argv


def _shell_word(word: str) -> str:
    """`word` quoted for /bin/sh, its {candidate} and {dest} left bare: outputs.substitute quotes them."""
    pieces = re.split(r"(\{candidate\}|\{dest\})", word)
    if word == "":
        return "''"
    return "".join(p if p in ("{candidate}", "{dest}") else shlex.quote(p) for p in pieces if p)


def parse_template_spec(text: str) -> Mapping[str, Any]:
    """--template-spec SRC:DEST[:CHECK[:RELOAD]] -> the keys of a [templates.NAME] table."""
    parts = text.split(":")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ConfigError("--template-spec", "", f"expected SRC:DEST[:CHECK[:RELOAD]], got {show(text)}")
    if len(parts) > 4:  # a ':' inside CHECK or RELOAD (a URL): no split of it is surely the meant one
        raise ConfigError(
            "--template-spec",
            "",
            f"expected SRC:DEST[:CHECK[:RELOAD]], got {len(parts)} ':'-separated parts in {show(text)}: "
            "CHECK and RELOAD may not contain ':' here; use a [templates.NAME] table",
        )
    values: dict[str, Any] = {"source": parts[0], "destination": parts[1]}
    if len(parts) > 2 and parts[2].strip():
        values["check"] = parts[2]
    if len(parts) > 3 and parts[3].strip():
        values["reload_command"] = parts[3]
    return values


def _template(t: Table, name: str, plugins_dir: Path, supervised: Sequence[str], origin: str) -> TemplateSpec:
    if not TEMPLATE_NAME_RE.match(name):
        raise t.fail("", f"template name must match [A-Za-z0-9_-]{{1,64}}, got {show(name)}")
    for unknown in set(t.values) - set(TEMPLATE_KEYS):
        raise t.fail(unknown, "unknown key")
    source = t.get("source", "text")
    if not source:
        raise t.fail("source", "required: the template file")
    if not os.path.isfile(source):
        raise t.fail("source", f"no such file {show(source)}")
    check_trusted(Path(source), "template", t.source("source"), t.key("source"))
    destination = t.get("destination", "text")
    if not destination:
        raise t.fail("destination", "required: the file to write")
    destination_path = Path(destination).absolute()
    if destination_path.is_dir():
        raise t.fail("destination", f"{show(destination)} is a directory")
    if not destination_path.parent.is_dir():
        raise t.fail("destination", f"directory {show(str(destination_path.parent))} does not exist")
    mode = 0o644
    if "mode" in t.values:
        try:
            mode = parse_mode(t.values["mode"])
        except ValueError as e:
            raise t.fail("mode", str(e)) from None
    owner = group = None
    if "owner" in t.values:
        try:
            owner, group = parse_owner(t.values["owner"])
        except ValueError as e:
            raise t.fail("owner", str(e)) from None
    shell = t.get("shell", "flag", False)
    commands = {}
    for key in ("check", "reload_command"):
        try:
            commands[key] = parse_command(t.values[key], shell) if key in t.values else ()
        except ValueError as e:
            raise t.fail(
                key, str(e) or f"expected a command (list of strings or a string), got {show(t.values[key])}"
            ) from None
    actions = [key for key in ("reload_program", "restart_program", "reload_command") if key in t.values]
    if len(actions) > 1:
        raise t.fail(
            actions[1], f"only one of reload_program, restart_program, reload_command (also {actions[0]})"
        )
    for key in ("reload_program", "restart_program"):
        program = t.get(key, "text")
        if program is not None and program not in supervised:
            raise t.fail(key, f"{show(program)} is not a supervised program (known: {', '.join(supervised)})")
    if "reload_signal" in t.values and "reload_program" not in t.values:
        raise t.fail("reload_signal", "only with reload_program")
    plugins = t.get("plugins", "text_list", ())
    for plugin in plugins:
        if not PLUGIN_NAME_RE.match(plugin):
            raise t.fail("plugins", f"plugin name must be a Python identifier, got {show(plugin)}")
        if not (plugins_dir / f"{plugin}.py").is_file():
            raise t.fail("plugins", f"no plugin {show(plugin)}: {plugins_dir / (plugin + '.py')} not found")
        check_trusted(plugins_dir / f"{plugin}.py", "plugin", t.source("plugins"), t.key("plugins"))
    return TemplateSpec(
        name=name,
        source=Path(source).absolute(),
        destination=destination_path,
        mode=mode,
        owner=owner,
        group=group,
        check=commands["check"],
        shell=shell,
        reload_program=t.get("reload_program", "text"),
        reload_signal=t.get("reload_signal", "signal", signal.SIGHUP),
        restart_program=t.get("restart_program", "text"),
        reload_command=commands["reload_command"],
        plugins=plugins,
        pass_env=pass_env_names(t, "pass_env"),
        mode_given="mode" in t.values,
        origin=origin,
    )


def load_templates(
    template_specs: Sequence[str],
    file: Optional[FileValues],
    tables: Mapping[str, Any],
    plugins_dir: Path,
    supervised: Sequence[str],
) -> Tuple[TemplateSpec, ...]:
    """[templates.NAME] tables, then each --template-spec as "spec1", "spec2", ... (both kinds add up)."""
    specs = []
    for name, values in tables.items():
        t = Table(file, f"templates.{name}", values if isinstance(values, Mapping) else {})
        if not isinstance(values, Mapping):
            raise t.fail("", f"expected a table, got {show(values)}")
        specs.append(_template(t, name, plugins_dir, supervised, t.source("")))
    for number, text in enumerate(template_specs, 1):
        name = f"spec{number}"
        if name in tables:
            raise ConfigError("--template-spec", "", f"{name} is also a [templates.{name}] table")
        t = Table(None, "", parse_template_spec(text))
        try:
            specs.append(_template(t, name, plugins_dir, supervised, "--template-spec"))
        except ConfigError as e:
            raise ConfigError("--template-spec", "", f"{show(text)}: {e.key}: {e.message}") from None
    return tuple(specs)


def check_destinations(templates: Sequence[TemplateSpec], haproxy_cfg: Optional[Path]) -> None:
    """Two templates may not write one file, nor a template HAProxy's own config."""
    seen: dict[Path, TemplateSpec] = {}
    for spec in templates:
        first = seen.get(spec.destination)
        if first is not None:
            raise ConfigError(
                spec.origin,
                f"templates.{spec.name}.destination",
                f"{show(str(spec.destination))} is also written by template {show(first.name)}",
            )
        if haproxy_cfg is not None and spec.destination == haproxy_cfg.absolute():
            raise ConfigError(
                spec.origin,
                f"templates.{spec.name}.destination",
                "is HAProxy's own config, which basenode renders from --template",
            )
        seen[spec.destination] = spec
