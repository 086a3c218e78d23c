"""The status endpoint: which path answers what, served by a thread of the sync process."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Optional, Tuple

from ..config import Settings
from . import document
from .httpserve import BoundedHTTPServer
from .metrics import metrics_text
from .state import SyncState

if TYPE_CHECKING:
    from .. import watch

# Its log lines keep the component `status` (log.py names a line by the logger's last part).
log = logging.getLogger(__package__)


def respond(
    settings: Settings, state: SyncState, watcher: Optional[watch.Watcher], target: str
) -> Tuple[int, str, bytes]:
    """The answer to GET `target` (path and query): (status code, content type, body)."""
    path = target.split("?", 1)[0]
    if path == "/explain":
        from .. import explain

        code, answer = explain.endpoint(settings, state, target)
        return code, "application/json", json.dumps(answer, indent=1, sort_keys=True).encode() + b"\n"
    if path not in ("/health", "/status", "/metrics"):
        return 404, "text/plain; charset=utf-8", b"not found: try /health, /status or /metrics\n"
    try:
        doc = document.collect(settings, state, watcher)
    except Exception:
        log.exception("status: cannot collect")
        return 500, "text/plain; charset=utf-8", b"internal error; see basenode's log\n"
    if path == "/metrics":
        return 200, "text/plain; version=0.0.4; charset=utf-8", metrics_text(doc, state)
    if path == "/health":
        doc = {"healthy": doc["healthy"], "problems": doc["problems"], "warnings": doc["warnings"]}
    code = 200 if path == "/status" or doc["healthy"] else 503
    return code, "application/json", json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


def serve(
    settings: Settings, state: SyncState, watcher: Optional[watch.Watcher]
) -> Optional[BoundedHTTPServer]:
    """Start the endpoint (a reader thread and a few workers, httpserve's bounds); None (logged) when
    its address cannot be bound."""
    host, port = settings.status_addr
    _warn_unless_loopback(host, port)
    try:
        server = BoundedHTTPServer(
            (host, port),
            lambda _method, path: respond(settings, state, watcher, path),
            name="basenode-status",
        )
    except OSError as e:
        log.error("status endpoint: cannot listen on %s:%d: %s (routing goes on without it)", host, port, e)
        return None
    server.start()
    log.info("status endpoint on http://%s:%d/ (health, status, metrics)", host, port)
    return server


def _warn_unless_loopback(host: str, port: int) -> None:
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        log.warning(
            "status endpoint on %s:%d is not loopback: anyone who reaches it reads the routes, the programs "
            "and the errors of this node (it changes nothing); bind 127.0.0.1 unless that is meant",
            host,
            port,
        )
