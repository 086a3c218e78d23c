"""What the sync process asks of the system: its heap's free pages back after a big render, and as
many open files as it may have (each blocking query holds a connection)."""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Optional


def return_free_memory() -> None:
    """Give the heap's free pages back to the system after an apply.

    Rendering and parsing a large config churns through megabytes of short-lived strings; glibc
    keeps the freed pages, so a sync process that once rendered 1,000 routes would hold that peak
    for ever. malloc_trim is glibc's; elsewhere this does nothing.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Optional[Callable[[int], int]]:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def raise_open_files_limit() -> None:
    """Soft limit on open files up to the hard one: each template dependency holds a connection."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
