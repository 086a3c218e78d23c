"""What the sync loop records as it goes, kept in memory by it and read by the status endpoint."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..output.record import OutputRecord

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
APPLY_HOWS = ("runtime", "reload", "written")
# template.loop.TemplateStatus counters that are failures: /metrics kinds, the status table's ERRORS column
TEMPLATE_ERROR_KINDS = (
    "render_errors",
    "plugin_errors",
    "check_failures",
    "reload_failures",
    "output_errors",
)


@dataclass
class SyncState(OutputRecord):
    """What the sync loop did, kept in memory by it (under its lock) and read by the endpoint: the
    record of HAProxy's config as an output (render_errors, check_failures, last_error) and more."""

    started: float = field(default_factory=time.time)
    syncs: int = 0
    last_sync: Optional[float] = None  # wall time of the last successful apply (or unchanged check)
    last_duration: Optional[float] = None
    last_how: Optional[str] = None  # unchanged | runtime | reload | restart | written
    applies: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(APPLY_HOWS, 0))
    apply_errors: int = 0  # last_error: "render: ...", "check: ..." or "apply: ..."; None after a success
    running: Any = None  # the snapshot.Snapshot HAProxy runs (routes reads it when asked)
    bucket_counts: List[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    duration_sum: float = 0.0
    templates: Dict[str, Any] = field(default_factory=dict)  # name -> template.loop.TemplateStatus
    refused_routes: Dict[str, str] = field(default_factory=dict)  # KV key -> why its route is left out
    applied: Any = None  # explain.Applied: the routes and Consul indexes HAProxy runs (for /explain)

    @property
    def routes(self) -> Tuple[Tuple[str, int, str, int], ...]:
        """(service, port, mode, healthy instances) of each route HAProxy runs."""
        routes = self.running.routes if self.running is not None else ()
        return tuple((r.route.service, r.route.port, r.route.mode, len(r.instances)) for r in routes)

    def observe(self, seconds: float) -> None:
        self.duration_sum += seconds
        for i, bound in enumerate(DURATION_BUCKETS):
            if seconds <= bound:
                self.bucket_counts[i] += 1
