"""The option table on the command line: argparse's options, the Flags they give, the argv that gives
the same Flags again (the sync child's), and the README's options table."""

from __future__ import annotations

import argparse
from typing import Any, List, Sequence

from .options import OPTIONS, Flags, Option


def _help(option: Option) -> str:
    where = [f"env {option.variable}"] if option.variable else []
    where += [f"file {option.key}"] if option.key else []
    if option.default is not None and option.kind.action == "store":
        where.append(f"default {option.default}")
    return f"{option.help} ({'; '.join(where)})" if where else option.help


def add_options(parser: argparse.ArgumentParser) -> None:
    """Every option of the table that has a flag."""
    for option in OPTIONS:
        if option.flag is None:
            continue
        more: dict = {"choices": option.kind.choices} if option.kind.choices else {}
        if option.metavar and not option.kind.choices:
            more["metavar"] = option.metavar
        if option.kind.action == "append":
            more["default"] = []
        parser.add_argument(
            option.flag, dest=option.name, action=option.kind.action, help=_help(option), **more
        )


def flags_from(args: argparse.Namespace, command: Sequence[str]) -> Any:
    """The Flags of parsed arguments, and the application COMMAND."""
    given = {}
    for option in OPTIONS:
        value = getattr(args, option.name)
        given[option.name] = tuple(value) if option.kind.action == "append" else value
    return Flags(**given, command=tuple(command))


def flags_to_argv(flags: Any) -> List[str]:
    """The options that give `flags` again, for the children that `run` starts (sync, register)."""
    argv: List[str] = []
    for option in OPTIONS:
        value = getattr(flags, option.name)
        if option.flag is None:
            continue
        if option.kind.action == "store_true":
            argv += [option.flag] if value else []
        elif option.kind.action == "append":
            for item in value:
                argv += [option.flag, item]
        elif value is not None:
            argv += [option.flag, value]
    return argv


def _code(text: str) -> str:
    return f"`{text}`".replace("|", "\\|") if text else ""


def readme_table() -> str:
    """The README's "Options and environment" table, one row per option."""
    rows = [
        "| flag | variable | file key | default | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for option in OPTIONS:
        default = option.default_doc or (_code(option.default) if option.default is not None else "none")
        cells = (_code(option.form), _code(option.variable or ""), _code(option.key or ""), default)
        rows.append(
            "|"
            + "|".join(f" {cell} " if cell else " " for cell in cells)
            + f"| {option.doc or option.help} |"
        )
    return "\n".join(rows) + "\n"
