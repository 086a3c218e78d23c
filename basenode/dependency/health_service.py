"""The instances of one service and their health: /v1/health/service/<name>.

One read serves every user of the service: HAProxy's route (healthy instances, its tag filter applied
by the route) and any template's `service()` (healthy or all). So the value keeps every valid instance
with whether it passes, and each user filters. Every instance is validated (snapshot.py's rules) before
it is kept: one that could not be written safely into a config file is dropped with one warning.

An entry imported from a peer cluster (Consul >= 1.14 marks it with `PeerName`) is not local: it
never enters local routing.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Sequence, Tuple

from ..snapshot import Instance, Rejected, instance_from_health, show
from .answers import objects

PASSING = ("passing",)
PASSING_OR_WARNING = ("passing", "warning")

ServiceValue = Tuple[Tuple[Instance, bool], ...]  # (instance, passing), sorted by instance key


def path(name: str) -> str:
    return f"/v1/health/service/{name}"


def healthy(checks: Any, include_warning: bool = False) -> bool:
    """Consul's `?passing` rule (no check anything but passing), widened to warning when asked."""
    admitted = PASSING_OR_WARNING if include_warning else PASSING
    if checks is None:
        return True
    if not isinstance(checks, Sequence):
        return False
    return all(isinstance(c, Mapping) and c.get("Status") in admitted for c in checks)


def from_peer(entry: Mapping[str, Any]) -> bool:
    """Imported from a peer cluster: the entry, its node or its service names a peer."""
    parts = (entry, entry.get("Node"), entry.get("Service"))
    return any(isinstance(part, Mapping) and part.get("PeerName") for part in parts)


def decode(name: str, body: Any, include_warning: bool) -> Tuple[ServiceValue, List[str]]:
    """Health entries -> ((Instance, passing), ...) sorted by key, and one warning per dropped instance.

    BadAnswer when the answer is not a list of objects: garbage from Consul is a failed read (the last
    good value stays), never "no instances".
    """
    kept: dict = {}
    warnings = []
    for entry in objects(body, path(name)):
        if from_peer(entry):
            continue
        try:
            instance = instance_from_health(entry)
        except Rejected as e:
            service = entry.get("Service")
            ident = service.get("ID") if isinstance(service, Mapping) else None
            warnings.append(f"service {show(name)}: dropped instance {show(ident)}: {e}")
            continue
        kept[instance.key] = (instance, healthy(entry.get("Checks"), include_warning))
    return tuple(kept[key] for key in sorted(kept)), warnings


def passing_instances(value: ServiceValue, tag: Any = None) -> Tuple[Instance, ...]:
    """The instances a route sends traffic to: passing, and carrying `tag` when it has one."""
    return tuple(i for i, ok in value if ok and (tag is None or tag in i.tags))
