"""The open-cluster warning: what the agent says decides it (issue 12, item 11)."""

from __future__ import annotations

import pytest

from basenode.exposure import warning


def agent(encrypted: bool, acls: bool, addr: str = "10.0.0.5") -> dict:
    return {
        "Member": {"Addr": addr},
        "Stats": {"serf_lan": {"encrypted": str(encrypted).lower()}},
        "DebugConfig": {"ACLsEnabled": acls},
    }


@pytest.mark.parametrize(
    "encrypted, acls, expected",
    [
        (False, False, ["gossip is not encrypted", "has no ACLs"]),
        (False, True, ["gossip is not encrypted"]),
        (True, False, ["has no ACLs"]),
    ],
)
def test_what_is_open_is_named(encrypted, acls, expected):
    text = warning(agent(encrypted, acls), joins=False)
    assert text is not None and all(part in text for part in expected)
    assert ("gossip is not encrypted" in text) == (not encrypted) and ("no ACLs" in text) == (not acls)


def test_a_closed_cluster_or_a_lone_loopback_agent_gets_none():
    assert warning(agent(True, True), joins=True) is None
    assert warning(agent(False, False, addr="127.0.0.1"), joins=False) is None
    assert warning(agent(False, False, addr="127.0.0.1"), joins=True) is not None
