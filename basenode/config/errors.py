"""ConfigError: one line naming the bad value and where it came from."""

from __future__ import annotations

import json
import re
from typing import Any

# A flag (`--bind`), a variable (`BASENODE_BIND`) or `COMMAND` already names the value; a file
# position (`basenode.toml:3`) needs the key beside it.
_NAMES_ITSELF = re.compile(r"^(--[a-z-]+|[A-Z][A-Z0-9_]*)$")


class ConfigError(Exception):
    """A bad value: `str()` is the one-line message shown to the user."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source = source
        self.key = key
        self.message = message
        where = f"{source}: " if source else ""
        what = f"{key}: " if key and not _NAMES_ITSELF.match(source) else ""
        super().__init__(f"{where}{what}{message}")


def show(value: Any) -> str:
    """A value as a message quotes it: JSON where it can be (strings in double quotes)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
