"""Faults a cluster does to a running basenode, against real processes (issue 5, item 4).

Each test starts the zipapp's `basenode run` with real HAProxy, a real Consul agent and real HTTP
backends on loopback, drives traffic through HAProxy (tests/support/backends.py Load) while it
injects one fault, and asserts what an operator relies on: routing goes on with the last good
config; the fault shows in /health (503, a problem with the documented prefix), in /metrics (a
counter or gauge moves) and in basenode's log; and once the fault ends everything recovers by
itself (/health 200, and a catalog change made after recovery is routed).
"""
