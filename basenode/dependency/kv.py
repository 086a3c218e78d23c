"""KV reads: one key (/v1/kv/<key>) and every key under a prefix (/v1/kv/<prefix>?recurse).

Values are text, any text: they reach a template unescaped, and the template chooses the escaping it
needs (HAProxy's own template refuses line breaks: render.py). A value that is not UTF-8 is no text.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

from .answers import BadAnswer, objects, text

PrefixValue = Tuple[Tuple[str, Optional[str]], ...]  # (full key, text or None), sorted; no folders


def path(key: str) -> str:
    return f"/v1/kv/{key}"


def decode_key(key: str, body: Any) -> Optional[str]:
    """The key's value as text; None when the key does not exist (404) or its value is not UTF-8;
    "" for a key that exists with an empty value (Consul sends Value null)."""
    items = objects(body, path(key))
    if not items:
        return None
    item = items[0]
    if item.get("Key") != key:
        raise BadAnswer(f"{path(key)}: answer is for another key")
    return "" if item.get("Value") is None else text(item.get("Value"))


def decode_prefix(prefix: str, body: Any) -> PrefixValue:
    """Every key under `prefix` with its text (None: empty or not UTF-8); folders and the prefix
    itself left out."""
    values = {}
    for item in objects(body, path(prefix)):
        key = item.get("Key")
        if not isinstance(key, str):
            raise BadAnswer(f"{path(prefix)}: an item has no key")
        if key == prefix or key.endswith("/") or not key.startswith(prefix):
            continue
        values[key] = text(item.get("Value"))
    return tuple(sorted(values.items()))


def tree(prefix: str, value: PrefixValue) -> Mapping[str, str]:
    """kv_tree(): {key relative to prefix: text} for the keys that hold text."""
    start = len(prefix)
    return {key[start:]: content for key, content in value if content is not None}
