"""`[watch]`: the watch -> render -> apply loop; its options from the table, the rest file keys."""

from __future__ import annotations

import re
from typing import Any, Mapping

from .errors import show
from .file import Tables
from .model import Watch


def load_watch(options: Mapping[str, Any], tables: Tables) -> Watch:
    """`options`: the table's resolved values (include_warning, apply_mode, ...)."""
    t = tables.section("watch")
    defaults = Watch()
    watch = Watch(
        wait_min=t.get("wait_min", "seconds", defaults.wait_min),
        wait_max=t.get("wait_max", "seconds", defaults.wait_max),
        blocking_wait=t.get("blocking_wait", "text", defaults.blocking_wait),
        include_warning=options["include_warning"],
        apply_mode=options["apply_mode"],
        startup_grace=t.get("startup_grace", "seconds", defaults.startup_grace),
        max_conns=options["watch_max_conns"],
    )
    if watch.wait_max < watch.wait_min:
        raise t.fail("wait_max", f"must be >= wait_min ({watch.wait_min}), got {show(watch.wait_max)}")
    if not re.match(r"^\d+(ms|s|m)$", watch.blocking_wait):
        raise t.fail("blocking_wait", f"expected a duration like 5m or 30s, got {show(watch.blocking_wait)}")
    return watch
