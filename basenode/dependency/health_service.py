"""The instances of one service and their health: /v1/health/service/<name>.

One read serves every user of the service: HAProxy's route (healthy instances, its tag filter applied
by the route) and any template's `service()` (healthy or all). So the value keeps every valid instance
with whether it passes, and each user filters. Every instance is validated (snapshot.py's rules) before
it is kept: one that could not be written safely into a config file is dropped with one warning.

An entry imported from a peer cluster (Consul >= 1.14 marks it with `PeerName`) is not local: it
never enters local routing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from ..snapshot import Instance, Rejected, instance_from_health, show
from .answers import objects

PASSING = ("passing",)
PASSING_OR_WARNING = ("passing", "warning")

ServiceValue = Tuple[Tuple[Instance, bool], ...]  # (instance, passing), sorted by instance key


def path(name: str) -> str:
    return f"/v1/health/service/{name}"


def refused_checks(checks: Any, include_warning: bool = False) -> Tuple[Any, ...]:
    """The checks that keep an instance out of routing by Consul's `?passing` rule (no check anything
    but passing), widened to warning when asked; () when it is healthy. Checks that are not a list
    refuse as a whole (the value itself is returned)."""
    admitted = PASSING_OR_WARNING if include_warning else PASSING
    if checks is None:
        return ()
    if not isinstance(checks, Sequence):
        return (checks,)
    return tuple(c for c in checks if not (isinstance(c, Mapping) and c.get("Status") in admitted))


def healthy(checks: Any, include_warning: bool = False) -> bool:
    return not refused_checks(checks, include_warning)


def other_datacenter(entry: Mapping[str, Any], read_from: str, local: str) -> Optional[str]:
    """Why an entry is not routed for its datacenter, or None when it is this node's: routing reads
    path(name) with no `dc`, which is the agent's own datacenter only. `read_from` is the datacenter
    that was asked; an entry's own Node.Datacenter, when it says one, wins."""
    node = entry.get("Node")
    said = node.get("Datacenter") if isinstance(node, Mapping) else None
    datacenter = said if isinstance(said, str) and said else read_from
    if datacenter == local:
        return None
    return f"in datacenter {show(datacenter)}: this node routes its own datacenter ({local}) only"


def carries(instance: Instance, tag: Any) -> bool:
    """A route's tag filter: no tag routes every instance, a tag only those that carry it."""
    return tag is None or tag in instance.tags


def from_peer(entry: Mapping[str, Any]) -> bool:
    """Imported from a peer cluster: the entry, its node or its service names a peer."""
    parts = (entry, entry.get("Node"), entry.get("Service"))
    return any(isinstance(part, Mapping) and part.get("PeerName") for part in parts)


@dataclass(frozen=True)
class Verdict:
    """What routing makes of one health entry: imported from a peer (ignored), rejected by validation,
    or a valid instance with the checks that keep it out (none: it passes)."""

    peer: bool = False
    rejected: Optional[Rejected] = None
    instance: Optional[Instance] = None
    refused: Tuple[Any, ...] = ()


def judge(entry: Mapping[str, Any], include_warning: bool) -> Verdict:
    """One element of /v1/health/service/<name> by the rules routing follows (and `basenode explain`
    reports)."""
    if from_peer(entry):
        return Verdict(peer=True)
    try:
        instance = instance_from_health(entry)
    except Rejected as e:
        return Verdict(rejected=e)
    return Verdict(instance=instance, refused=refused_checks(entry.get("Checks"), include_warning))


def decode(name: str, body: Any, include_warning: bool) -> Tuple[ServiceValue, List[str]]:
    """Health entries -> ((Instance, passing), ...) sorted by key, and one warning per dropped instance.

    BadAnswer when the answer is not a list of objects: garbage from Consul is a failed read (the last
    good value stays), never "no instances".
    """
    kept: dict = {}
    warnings = []
    for entry in objects(body, path(name)):
        verdict = judge(entry, include_warning)
        if verdict.peer:
            continue
        if verdict.instance is None:
            service = entry.get("Service")
            ident = service.get("ID") if isinstance(service, Mapping) else None
            warnings.append(f"service {show(name)}: dropped instance {show(ident)}: {verdict.rejected}")
            continue
        kept[verdict.instance.key] = (verdict.instance, not verdict.refused)
    return tuple(kept[key] for key in sorted(kept)), warnings


def passing_instances(value: ServiceValue, tag: Any = None) -> Tuple[Instance, ...]:
    """The instances a route sends traffic to: passing, and carrying `tag` when it has one."""
    return tuple(i for i, ok in value if ok and carries(i, tag))
