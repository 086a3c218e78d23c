"""One warning at start when this node's cluster is open to anyone on the network.

Consul without a gossip key lets any host that reaches a gossip port (8301) join as a node and
register services, which every basenode then routes to; without ACLs, anyone who reaches an agent's
HTTP API writes `basenode/routes/` keys and reads every KV value. Both are Consul's defaults, fine
on one laptop and dangerous on a shared network, so the sync loop asks its agent once, as soon as
it answers, and says in one line what is open and what that allows.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import Any, Mapping, Optional

from .config import Settings

log = logging.getLogger(__name__)
ASK_EVERY = 1.0
GIVE_UP_AFTER = 120.0  # an agent that never answers is /health's business, not this warning's


def _loopback(address: Any) -> bool:
    try:
        return ipaddress.ip_address(str(address)).is_loopback
    except ValueError:
        return False


def warning(agent_self: Mapping[str, Any], joins: bool) -> Optional[str]:
    """The warning for an agent (its /v1/agent/self) that is in a cluster others can reach (`joins`,
    or gossip bound off loopback) with gossip unencrypted or no ACLs; None when neither applies."""
    member = agent_self.get("Member") or {}
    if not joins and _loopback(member.get("Addr")):
        return None  # a single agent on loopback: nobody else can reach it
    stats = agent_self.get("Stats") or {}
    debug = agent_self.get("DebugConfig") or {}
    unencrypted = str((stats.get("serf_lan") or {}).get("encrypted", "")).lower() == "false"
    no_acls = debug.get("ACLsEnabled") is False
    if not unencrypted and not no_acls:
        return None
    open_parts, allows = [], []
    if unencrypted:
        open_parts.append("gossip is not encrypted (no CONSUL_ENCRYPT)")
        allows.append(
            "anyone who reaches a gossip port (8301) can join as a node and register services that this "
            "node then routes traffic to"
        )
    if no_acls:
        open_parts.append("the agent has no ACLs")
        allows.append(
            "anyone who reaches any agent's HTTP API can write basenode/routes/ keys, register or "
            "deregister services and read every KV value"
        )
    return (
        f"consul: this node is in a cluster where {' and '.join(open_parts)}: {'; '.join(allows)}. "
        "Set CONSUL_ENCRYPT on every node and enable ACLs (with CONSUL_HTTP_TOKEN) unless the network "
        "is yours alone."
    )


def warn_when_known(settings: Settings, stop: threading.Event) -> threading.Thread:
    """Ask the agent in a daemon thread until it answers (or GIVE_UP_AFTER), then log the warning once."""
    thread = threading.Thread(target=_ask, args=(settings, stop), name="exposure", daemon=True)
    thread.start()
    return thread


def _ask(settings: Settings, stop: threading.Event) -> None:
    from . import consul

    # The sync child runs with --no-consul under `run`, but reads the same [consul] join and server.
    joins = bool(settings.agent.join or settings.agent.server)
    client = consul.make_client(settings.consul_http, timeout=5.0)
    try:
        for _ in range(int(GIVE_UP_AFTER / ASK_EVERY)):
            try:
                agent_self = client.agent.self()
            except consul.ERRORS:
                if stop.wait(ASK_EVERY):
                    return
                continue
            text = warning(agent_self if isinstance(agent_self, Mapping) else {}, joins)
            if text:
                log.warning("%s", text)
            return
    finally:
        client.http.close()
