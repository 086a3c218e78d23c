"""Kinds of option value: how one reads from a flag, a variable and the config file.

A flag and a variable are text; a file value is TOML-typed (a number of seconds is a number there, a
switch `true`/`false`). Each parser returns the value or raises ValueError with the message to show."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

from .. import childenv
from . import values
from .errors import show
from .values import account_problem, check_bind, split_host_port

Parse = Callable[[Any], Any]


@dataclass(frozen=True)
class Kind:
    """One kind of value: its parser for each layer, and how argparse takes its flag."""

    variable: Parse  # a variable's text, and a flag's unless `flag` is set
    file: Parse  # the TOML value
    flag: Optional[Parse] = None
    action: str = "store"  # argparse's: "store", "store_true" (a bare switch), "append" (repeatable)
    choices: Tuple[str, ...] = ()  # the flag's, for argparse and the README

    def from_flag(self, raw: Any) -> Any:
        return (self.flag or self.variable)(raw)


def expecting(what: str, convert: Parse) -> Parse:
    """`convert`, its bare errors said as "expected WHAT, got VALUE"."""

    def parse(raw: Any) -> Any:
        try:
            return convert(raw)
        except (TypeError, ValueError) as e:
            raise ValueError(str(e) or f"expected {what}, got {show(raw)}") from None
        except LookupError:  # not among the names a table (on/off) knows
            raise ValueError(f"expected {what}, got {show(raw)}") from None

    return parse


def _as_text(convert: Parse) -> Parse:
    """A file value that must be a string, then read as a variable's text would be."""

    def parse(raw: Any) -> Any:
        if not isinstance(raw, str):
            raise ValueError(f"expected a string, got {show(raw)}")
        return convert(raw)

    return parse


def _bare(convert: Parse) -> Parse:
    """`convert` whose errors (Python's own words: "could not convert string to float") say nothing."""

    def parse(raw: Any) -> Any:
        try:
            return convert(raw)
        except (TypeError, ValueError):
            raise ValueError("") from None

    return parse


def _one_of(names: Tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _identity(raw: Any) -> Any:
    return raw


def _switch_text(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("")


SWITCH_TEXT = expecting("1/0 or true/false", _switch_text)
FILE_SWITCH = expecting("true or false", values.flag)

TEXT = Kind(variable=str, file=expecting("a string", values.text))
SECONDS = Kind(
    variable=expecting("a number of seconds", _bare(lambda raw: values.seconds(float(raw)))),
    file=expecting("a number of seconds", values.seconds),
)
ADDRESS = Kind(variable=check_bind, file=_as_text(check_bind))
HOST_PORT = Kind(variable=split_host_port, file=_as_text(split_host_port))
# on|off as a flag, 1/0 (or true/false, on/off) as a variable, true/false in the file.
ON_OFF = Kind(
    variable=SWITCH_TEXT,
    file=FILE_SWITCH,
    flag=expecting("on or off", {"on": True, "off": False}.__getitem__),
    choices=("on", "off"),
)
# A bare flag that switches something on (`--no-consul`); as a variable 1/0.
PRESENCE = Kind(variable=SWITCH_TEXT, file=FILE_SWITCH, flag=_identity, action="store_true")
# `--no-consul`'s file key is `consul.enabled`: false there means what the flag says.
PRESENCE_OF_DISABLED = Kind(
    variable=SWITCH_TEXT, file=lambda raw: not FILE_SWITCH(raw), flag=_identity, action="store_true"
)
# Given several times, each adds one (`--template-spec`).
REPEATED = Kind(variable=lambda raw: (raw,), file=_identity, flag=tuple, action="append")
# Parsed by its section, which knows the file's tables (routes: `[routes.NAME]`).
SECTION = Kind(variable=_identity, file=_identity)


def choice(*names: str, fold_case: bool = False) -> Kind:
    """One of `names` (`text|json`); `fold_case`: in any case, kept lower case."""

    def pick(raw: Any) -> str:
        value = raw.lower() if fold_case and isinstance(raw, str) else raw
        if value not in names:
            raise ValueError(f"expected {_one_of(names)}, got {show(raw)}")
        return value

    return Kind(variable=pick, file=pick, choices=names)


def number(low: int, high: int, what: str) -> Kind:
    """A whole number `low`..`high`: text as a flag or variable, a TOML integer in the file."""

    def within(found: int) -> int:
        if isinstance(found, bool) or not isinstance(found, int) or not low <= found <= high:
            raise ValueError("")
        return found

    return Kind(variable=expecting(what, _bare(lambda raw: within(int(raw)))), file=expecting(what, within))


def _port_range(raw: Any) -> Tuple[int, int]:
    low, _, high = str(raw).strip().partition("-")
    ports = (int(low), int(high or low))
    if not (1 <= ports[0] <= ports[1] <= 65535):
        raise ValueError("")
    return ports


PORT_RANGE = Kind(
    variable=expecting("a port range LOW-HIGH within 1-65535", _bare(_port_range)),
    file=expecting("a port range LOW-HIGH within 1-65535", _bare(_port_range)),
)


def _comma_names(raw: str) -> Tuple[str, ...]:
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    childenv.check_names(names)
    return names


def _listed_names(raw: Any) -> Tuple[str, ...]:
    names = expecting("a list of strings", values.text_list)(raw)
    childenv.check_names(names)
    return names


# Variable names: a comma list as text, a list of strings in the file.
NAMES = Kind(variable=_comma_names, file=_listed_names)


def account(kind: str) -> Kind:
    """A user or group (name or number) that exists here."""

    def parse(raw: str) -> str:
        problem = account_problem(kind, raw)
        if problem:
            raise ValueError(problem)
        return raw

    return Kind(variable=parse, file=_as_text(parse))
