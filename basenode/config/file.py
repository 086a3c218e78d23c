"""The TOML config file: parsed, each key's line found for messages, typed reads with unknown-key
detection (`Table`), and the trust check of the files basenode runs or renders from."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from .errors import ConfigError, show
from .values import CONVERT, EXPECT

try:  # Python 3.11+
    import tomllib as _toml
except ImportError:  # 3.9, 3.10: the bundled tomli
    import tomli as _toml  # type: ignore[no-redef]


class FileValues:
    """A parsed TOML file that can say on which line a key stands."""

    def __init__(self, path: Path, text: str, data: Mapping[str, Any]) -> None:
        self.path = path
        self.lines = text.splitlines()
        self.data = data

    def source(self, dotted: str) -> str:
        line = _locate(self.lines, dotted.split("."))
        return f"{self.path}:{line}" if line else str(self.path)


def _locate(lines: Sequence[str], keys: Sequence[str]) -> Optional[int]:
    """Line number of a key in TOML text: the key's own line, else its table's header line."""
    table_re = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    key_re = re.compile(r"^\s*([A-Za-z0-9_.\"'-]+)\s*=")
    table: list[str] = []
    header_line = None
    want_table, want_key = list(keys[:-1]), keys[-1]
    for number, line in enumerate(lines, 1):
        m = table_re.match(line)
        if m:
            table = [part.strip().strip("\"'") for part in m.group(1).split(".")]
            if table == list(keys):
                header_line = number
            continue
        m = key_re.match(line)
        if m:
            path = table + [part.strip().strip("\"'") for part in m.group(1).split(".")]
            if path == list(keys) or (path[: len(keys)] == list(keys)):
                return number
            if table == want_table and path[-1] == want_key and len(path) == len(keys):
                return number
    return header_line


def read_file(path: Path, explicit: bool, source: str) -> Optional[FileValues]:
    """Parse the TOML config; a missing default file is not an error, a missing named one is."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(source, "", f"config file {show(str(path))} not found") from None
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), "", f"cannot read config file: {e}") from None
    try:
        data = _toml.loads(text)
    except _toml.TOMLDecodeError as e:
        line = getattr(e, "lineno", None) or _line_from_message(str(e))
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(where, "", f"invalid TOML: {str(e).split(' (at line')[0]}") from None
    return FileValues(path, text, data)


def _line_from_message(message: str) -> Optional[int]:
    m = re.search(r"at line (\d+)", message)
    return int(m.group(1)) if m else None


class Table:
    """Typed reads from one table of the config file, with unknown-key detection."""

    def __init__(self, file: Optional[FileValues], prefix: str, values: Mapping[str, Any]) -> None:
        self.file = file
        self.prefix = prefix
        self.values = values
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix and name else self.prefix or name

    def source(self, name: str) -> str:
        return self.file.source(self.key(name)) if self.file else ""

    def fail(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.source(name), self.key(name), message)

    def get(self, name: str, kind: str, default: Any = None) -> Any:
        self.used.add(name)
        if name not in self.values:
            return default
        value = self.values[name]
        try:
            return CONVERT[kind](value)
        except (TypeError, ValueError) as e:
            raise self.fail(name, str(e) or f"expected {EXPECT[kind]}, got {show(value)}") from None

    def table(self, name: str) -> Mapping[str, Any]:
        self.used.add(name)
        value = self.values.get(name, {})
        if not isinstance(value, Mapping):
            raise self.fail(name, f"expected a table, got {show(value)}")
        return value

    def check_unknown(self) -> None:
        for name in self.values:
            if name not in self.used:
                raise self.fail(name, "unknown key")


class Tables:
    """The file's top level and its `[section]` tables, each made once, so that a key read by an
    option (`watch.max_conns`) and one read by its section (`watch.wait_min`) both count as known."""

    def __init__(self, file: Optional[FileValues]) -> None:
        self.file = file
        self.top = Table(file, "", file.data if file else {})
        self._sections: Dict[str, Table] = {}

    def section(self, name: str) -> Table:
        if name not in self._sections:
            self._sections[name] = Table(self.file, name, self.top.table(name))
        return self._sections[name]

    def locate(self, dotted: str) -> Tuple[Table, str]:
        """The table holding a file key (`bind`, `watch.max_conns`) and its name there."""
        section, _, name = dotted.rpartition(".")
        return (self.section(section) if section else self.top), name


def check_trusted(path: Path, what: str, source: str, key: str) -> None:
    """ConfigError unless `path` (and the directories above it) pass trust.check_trusted_file: owned
    by root or basenode's user, writable by nobody else. /dev/null (an empty config) is no file."""
    from .. import trust

    if os.path.exists(path) and not os.path.isfile(path):
        return  # a device such as /dev/null: nothing in it to trust or not
    try:
        trust.check_trusted_file(path, what)
    except trust.UntrustedPath as e:
        raise ConfigError(source, key, str(e)) from None
