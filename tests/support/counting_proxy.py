"""A small loopback HTTP proxy in front of the real Consul agent that counts the requests it passes on.

Point CONSUL_HTTP_ADDR at `proxy.addr`: every request is forwarded to the agent as it came and the
answer returned as it went, while the proxy counts requests per path and how many of them are held
open at once (a blocking query is held until Consul answers it).
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Tuple
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class CountingProxy:
    def __init__(self, upstream: Tuple[str, int]) -> None:
        self.upstream = upstream
        self.lock = threading.Lock()
        self.requests: Counter = Counter()  # path -> requests passed on
        self.blocking: Counter = Counter()  # path -> requests that carried an index (blocking queries)
        self.in_flight: Counter = Counter()  # path -> requests waiting for the agent's answer now
        self.max_in_flight: Counter = Counter()  # path -> the most ever waiting at once
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _forward(self) -> None:
                url = urlsplit(self.path)
                blocking = "index=" in (url.query or "")
                with proxy.lock:
                    proxy.requests[url.path] += 1
                    proxy.blocking[url.path] += blocking
                    proxy.in_flight[url.path] += 1
                    proxy.max_in_flight[url.path] = max(
                        proxy.max_in_flight[url.path], proxy.in_flight[url.path]
                    )
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length) if length else None
                    upstream = http.client.HTTPConnection(*proxy.upstream, timeout=700)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                    upstream.close()
                finally:
                    with proxy.lock:
                        proxy.in_flight[url.path] -= 1
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_DELETE = do_POST = _forward

        return Handler
