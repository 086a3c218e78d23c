"""What every decoder checks first: Consul answered in the shape its API documents."""

from __future__ import annotations

import base64
import binascii
from typing import Any, List, Mapping, Optional


class BadAnswer(ValueError):
    """Consul answered, but not in the documented shape: a failed read, never an empty one."""


def objects(items: Any, what: str) -> List[Mapping[str, Any]]:
    """`items` when it is a list of JSON objects, as Consul answers; [] for no answer (404).

    Anything else is a broken answer, not an empty one: dropping the elements that are not objects
    would turn garbage from Consul into "no instances" and take every server out of HAProxy.
    """
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise BadAnswer(f"{what}: not a list of objects: {str(items)[:100]!r}")
    return items


def text(value: Any) -> Optional[str]:
    """A KV value (base64 in Consul's JSON) as UTF-8 text; None for no value or one that is not UTF-8."""
    if value is None:
        return None
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else None
    except binascii.Error:
        raw = None
    if raw is None:
        raise BadAnswer(f"KV value is not base64: {str(value)[:60]!r}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
