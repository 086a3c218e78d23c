"""Dependencies: every Consul read a render can need, one small module per kind of read.

A dependency is a `Query` (its stable identity: two users of the same read share it) and a kind that
knows its endpoint and validates what comes back (`fetch`). Only documented, versioned endpoints:
/v1/health/service/<name>, /v1/kv/..., /v1/catalog/services, /v1/catalog/node/<name>. The values are
immutable and validated, so a cache of them can be handed to any template as is.
"""

from .fetch import READ_ERRORS, Result, fetch, fetch_now
from .query import KEY, KINDS, NODE, PREFIX, SERVICE, SERVICES, Query

__all__ = [
    "KEY",
    "KINDS",
    "NODE",
    "PREFIX",
    "READ_ERRORS",
    "SERVICE",
    "SERVICES",
    "Query",
    "Result",
    "fetch",
    "fetch_now",
]
