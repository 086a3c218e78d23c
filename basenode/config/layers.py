"""The precedence, once: flag > environment variable > config file > default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

from .errors import ConfigError
from .file import Tables
from .kinds import Parse
from .options import Option

Environ = Mapping[str, str]


@dataclass(frozen=True)
class Layer:
    """Where an option's value came from: its raw form, and how that form reads."""

    origin: str  # "flag", "variable", "file" or "default"
    raw: Any
    source: str  # for messages: "--bind", "BASENODE_BIND", "basenode.toml:3", "default"
    parse: Parse


def first_layer(option: Option, flags: Any, environ: Environ, tables: Optional[Tables]) -> Optional[Layer]:
    """The highest layer that gives `option` a value; None when none does and it has no default.

    Not given: a flag left None, False (a bare switch) or () (a repeatable one); an unset or empty
    variable; a file key that is absent (or no file: `tables` None, while the file is being found)."""
    kind = option.kind
    in_file: Optional[Layer] = None
    if option.key and tables is not None:
        table, name = tables.locate(option.key)
        table.used.add(name)  # a known key even when a higher layer wins
        if name in table.values:
            in_file = Layer("file", table.values[name], table.source(name), kind.file)
    raw = getattr(flags, option.name, None) if option.flag else None
    if raw not in (None, False, ()):
        return Layer("flag", raw, option.flag or "", kind.from_flag)
    raw = environ.get(option.variable) if option.variable else None
    if raw not in (None, ""):
        return Layer("variable", raw, option.variable or "", kind.variable)
    if in_file is not None:
        return in_file
    if option.default is not None:
        return Layer("default", option.default, "default", kind.variable)
    return None


def read(layer: Layer, option: Option) -> Any:
    """The layer's value; ConfigError naming its source (and the file key) and the value."""
    try:
        return layer.parse(layer.raw)
    except ValueError as e:
        raise ConfigError(layer.source, option.key or "", str(e)) from None


def resolve(option: Option, flags: Any, environ: Environ, tables: Optional[Tables]) -> Tuple[Any, str]:
    """The option's value and its source ("" when unset)."""
    layer = first_layer(option, flags, environ, tables)
    if layer is None:
        return None, ""
    return read(layer, option), layer.source
