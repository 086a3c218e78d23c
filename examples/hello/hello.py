"""The cluster demo's application: answers every GET with the name of the host it runs on.

`/health` is what its Consul check asks (SERVICE_CHECK_HTTP); everything else says hello.
Standard library only, so it runs on any python3 the image has.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOSTNAME = socket.gethostname()


class Hello(BaseHTTPRequestHandler):
    # Keep-alive, as browsers and HAProxy use it: the drain test needs connections that stay open.
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"ok\n" if self.path == "/health" else f"hello from {HOSTNAME}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would drown basenode's own log


def main() -> int:
    port = int(os.environ.get("SERVICE_PORT", "8080"))
    # Other nodes' HAProxy reach this app at the container's address: listen on all of them.
    server = ThreadingHTTPServer(("0.0.0.0", port), Hello)
    server.daemon_threads = True
    # basenode forwards SIGTERM after it has deregistered the service and drained.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"hello: {HOSTNAME} listening on :{port}", flush=True)
    try:
        server.serve_forever()
    except SystemExit:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
