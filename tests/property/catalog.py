"""Put one hypothesis Example into a real Consul agent, read back what Consul kept, and take it out again.

Routes go in through /v1/txn (the KV key travels in the JSON body, so a key with `?`, `#`, a newline
or `/../` is stored exactly as generated instead of being mangled in a URL). Instances go in through
/v1/catalog/register on the example's own nodes (external nodes, as consul-esm or registrator create;
deregistering a node removes all its services at once) or /v1/agent/service/register on the agent's
own node, as an application does. Consul refuses some values (bad meta keys, weights <= 0 through the
agent...): a refused registration is simply not in the catalog, and the oracle reads the catalog.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Tuple

from tests.support.consul_agent import ConsulAgent
from tests.support.waiting import eventually

from .hostile import Example, Registration, RouteSpec
from .oracle import ROUTES_PREFIX

CONSUL_REFUSED = (urllib.error.HTTPError,)


@dataclass(frozen=True)
class Stored:
    kv_keys: Tuple[str, ...]  # the route keys Consul holds
    registered: int  # instances Consul accepted


def store(agent: ConsulAgent, example: Example, serial: int) -> Stored:
    for route in example.routes:
        op = {"KV": {"Verb": "set", "Key": ROUTES_PREFIX + route.name, "Value": _b64(route.value)}}
        assert _accepted(agent, "/v1/txn", [op]), f"Consul refused the KV key of route {route.name!r}"
    registered = 0
    agent_ids: List[str] = []
    for r, route in enumerate(example.routes):
        for i, instance in enumerate(route.instances):
            if instance.via == "agent":
                # IDs on the agent's node are the test's own: deregistration takes the ID in a URL.
                service_id = f"agent-{serial}-{r}-{i}"
                accepted = _accepted(
                    agent, "/v1/agent/service/register", _agent_body(service_id, route, instance)
                )
                if accepted:
                    agent_ids.append(service_id)
            else:
                body = _catalog_body(example, route, instance, check_id=f"check-{r}-{i}")
                accepted = _accepted(agent, "/v1/catalog/register", body)
            registered += accepted
    if agent_ids:
        # The agent syncs its own services to the catalog a moment after it accepts them.
        eventually(lambda: set(agent_ids) <= _agent_node_services(agent), timeout=10, what="agent sync")
    keys = agent.get(f"/v1/kv/{ROUTES_PREFIX}?keys") or []
    return Stored(kv_keys=tuple(keys), registered=registered)


def health_entries(agent: ConsulAgent, service: str) -> List[Mapping[str, Any]]:
    """/v1/health/service/<service> exactly as Consul answers it (no client library in between)."""
    return agent.get("/v1/health/service/" + urllib.parse.quote(service, safe="")) or []


def remove(agent: ConsulAgent, example: Example) -> None:
    """Everything an example may have left, even one whose store() failed half-way."""
    agent.request("DELETE", f"/v1/kv/{ROUTES_PREFIX}?recurse")
    for node in example.nodes:
        _accepted(agent, "/v1/catalog/deregister", {"Node": node.name})
    ours = _agent_node_services(agent) - {"consul"}
    for service_id in ours:
        agent.request("PUT", f"/v1/agent/service/deregister/{service_id}")
    if ours:
        eventually(lambda: not ours & _agent_node_services(agent), what="agent sync")


def _agent_node_services(agent: ConsulAgent) -> set:
    node = agent.get(f"/v1/catalog/node/{agent.node_name}") or {}
    return set(node.get("Services") or {})


def _service_fields(route: RouteSpec, instance: Registration) -> Dict[str, Any]:
    fields: Dict[str, Any] = {"Address": instance.address, "Port": instance.port, "Tags": list(instance.tags)}
    if instance.meta:
        fields["Meta"] = dict(instance.meta)
    if instance.weight is not None:
        fields["Weights"] = {"Passing": instance.weight, "Warning": 1}
    return fields


def _agent_body(service_id: str, route: RouteSpec, instance: Registration) -> Dict[str, Any]:
    body = {"ID": service_id, "Name": route.name, **_service_fields(route, instance)}
    if instance.status is not None:
        body["Check"] = {"CheckID": f"ttl-{service_id}", "TTL": "10m", "Status": instance.status}
    return body


def _catalog_body(
    example: Example, route: RouteSpec, instance: Registration, check_id: str
) -> Dict[str, Any]:
    node = example.nodes[instance.node]
    body: Dict[str, Any] = {
        "Node": node.name,
        "Address": node.address,
        "Service": {"ID": instance.id, "Service": route.name, **_service_fields(route, instance)},
    }
    if instance.status is not None:
        body["Check"] = {
            "Node": node.name,
            "CheckID": check_id,
            "Name": "probe",
            "Status": instance.status,
            "ServiceID": instance.id,
        }
    return body


def _accepted(agent: ConsulAgent, path: str, body: Any) -> bool:
    """PUT `body` to `path`: True when Consul took it, False when it refused it (4xx/5xx)."""
    try:
        agent.request("PUT", path, raw=json.dumps(body).encode())
    except CONSUL_REFUSED:
        return False
    return True


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
