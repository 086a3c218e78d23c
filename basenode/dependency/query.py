"""The identity of a dependency: one Consul read that a render needs, shared by everyone who needs it."""

from __future__ import annotations

from dataclasses import dataclass

SERVICE = "service"  # the instances of a service, with their health (/v1/health/service/<name>)
SERVICES = "services"  # every service name and its tags (/v1/catalog/services)
KEY = "key"  # one KV key (/v1/kv/<key>)
PREFIX = "prefix"  # every key under a KV prefix (/v1/kv/<prefix>?recurse)
NODE = "node"  # the local agent's node (/v1/agent/self, then /v1/catalog/node/<name>)
KINDS = (SERVICE, SERVICES, KEY, PREFIX, NODE)


@dataclass(frozen=True, order=True)
class Query:
    """One Consul read; equal queries are one blocking query, however many templates ask for it."""

    kind: str
    name: str = ""  # the service, the key or the prefix
    datacenter: str = ""  # a service's datacenter; "" is the local agent's

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown dependency kind {self.kind!r}")

    def __str__(self) -> str:
        text = {SERVICE: "service ", KEY: "kv ", PREFIX: "kv tree "}.get(self.kind, self.kind) + self.name
        return f"{text}@{self.datacenter}" if self.datacenter else text
