"""The status endpoint: /health, /status and /metrics on --status-addr, served by the sync loop.

The sync process knows what matters at 3 a.m. (is Consul answering, did the last render, check and
apply work, when was HAProxy last confirmed in step with the catalog), so it serves the endpoint
from memory: nothing is written to disk on the way, and a full state dir cannot hide a fault.
Program states come from PID 1 over its control socket (control.py).

Every request builds one status document (`document.collect`); /health is its `healthy` and
`problems` (`health`), /metrics is the same facts in Prometheus' text format (`metrics`), /status is
the document itself, and `basenode status --json` prints it (`commands`). The document's keys are
documented in README.md and stable.

  state       what the sync loop records as it goes (SyncState), read by the rest
  document    the status document of a sync loop, probing the agent, HAProxy and PID 1
  health      the health rules: the problems of a document, and of PID 1's programs
  supervisor  the document when PID 1 runs no sync loop (basenode as a plain supervisor)
  metrics     the document in Prometheus' text format
  server      the endpoint: which path answers what, on httpserve's bounded server
  httpserve   the bounded HTTP server itself: fixed threads, deadlines, size limits
  commands    `basenode status` and `basenode health`: ask a running basenode, print the answer

`basenode health`, which a HEALTHCHECK runs every few seconds, imports only commands, supervisor,
health and state: the sync loop's side imports consul, haproxy and routes where it needs them.
"""
