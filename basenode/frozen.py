"""A frozen dataclass's hash, computed once per object.

Routes and route states are dict keys on the hot path (the render cache, the snapshot, the watch's
wanted set): thousands of them are hashed on every change, and a dataclass's generated __hash__
hashes every field again each time, instances included. Frozen means the fields never change, so the
first hash is kept on the object (outside its fields: equality, repr, replace() and asdict() are as
generated).
"""

from __future__ import annotations

import dataclasses
from typing import Any

_SLOT = "_cached_hash"


def cached_hash(obj: Any) -> int:
    """hash() of the object's fields, the same value every time; for use as a frozen dataclass's
    __hash__ (defined in the class body, so that @dataclass keeps it)."""
    try:
        return obj.__dict__[_SLOT]
    except KeyError:
        value = hash(tuple(getattr(obj, f.name) for f in dataclasses.fields(obj) if f.compare))
        object.__setattr__(obj, _SLOT, value)
        return value
