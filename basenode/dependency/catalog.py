"""Catalog reads: every service and its tags (/v1/catalog/services), and the local node."""

from __future__ import annotations

from typing import Any, Mapping, Tuple

from ..snapshot import node_from_agent, services_from_catalog
from .answers import BadAnswer

SERVICES_PATH = "/v1/catalog/services"
AGENT_SELF_PATH = "/v1/agent/self"

ServicesValue = Tuple[Tuple[str, Tuple[str, ...]], ...]  # (name, tags), sorted
NodeValue = Tuple[Tuple[str, str], ...]  # (("name", ..), ("datacenter", ..), ("address", ..))


def node_path(name: str) -> str:
    return f"/v1/catalog/node/{name}"


def decode_services(body: Any) -> Tuple[ServicesValue, list]:
    if not isinstance(body, Mapping):
        raise BadAnswer(f"{SERVICES_PATH}: not an object: {type(body).__name__}")
    return services_from_catalog(body)


def agent_node(body: Any) -> Tuple[Any, Any]:
    """(node name, datacenter) from /v1/agent/self."""
    config = body.get("Config") if isinstance(body, Mapping) else None
    if not isinstance(config, Mapping):
        raise BadAnswer(f"{AGENT_SELF_PATH}: no Config")
    return config.get("NodeName"), config.get("Datacenter")


def decode_node(name: Any, datacenter: Any, body: Any) -> NodeValue:
    """Validated, or Rejected (a failed read: the last good value stays)."""
    entry = body if isinstance(body, Mapping) else {}
    node = entry.get("Node") if isinstance(entry.get("Node"), Mapping) else {}
    return node_from_agent({"name": name, "datacenter": datacenter, "address": node.get("Address")})
