"""Consul's HTTP API for the watch: HTTP/1.1 (h11) on asyncio streams, within a connection budget.

Every blocking query holds one connection for up to `wait`, so the number of connections is the number
of queries in flight; Consul refuses a client address more than `limits.http_max_conns_per_client`
(200 by default) and resets the rest. `Pool` therefore never has more than `max_connections` open
connections, idle ones included: a request that finds none free waits for one. Idle connections are
kept (keep-alive) for the next request, up to a few.

Why h11 and not py-consul's requests client or aiohttp: requests is blocking (a thread per query),
aiohttp has compiled parts (the zipapp is pure Python on CPython 3.9-3.13), and httpx brings five
packages for what one small module does here. h11 is the HTTP/1.1 state machine alone, pure Python,
with no dependencies; this module adds the sockets, TLS, timeouts and the pool.

The token travels in the X-Consul-Token header, never in a URL, so it cannot reach a log line.
"""

from __future__ import annotations

import asyncio
import collections
import json
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any, Deque, List, Optional, Sequence, Tuple

import h11

from .config import ConsulHTTP

DEFAULT_TIMEOUT = 10.0  # seconds, for a request that is not a blocking query
BLOCKING_MARGIN = 10.0  # beyond wait + wait/16 (Consul's own jitter) before a blocking read times out
MAX_BODY = 256 * 1024 * 1024  # an answer larger than this is an error, not a reason to run out of memory
IDLE_KEPT = 4  # idle keep-alive connections kept open beyond those in use
USER_AGENT = "basenode"


class ConsulException(Exception):
    """A request failed: the transport, a timeout, an error status or an answer that is not JSON."""


@dataclass(frozen=True)
class Answer:
    status: int
    index: int  # X-Consul-Index, 0 when absent
    body: Any  # decoded JSON; None for a 404


@dataclass
class Counters:
    """What this pool has cost the agent, for status and benchmarks."""

    requests: int = 0
    bytes_received: int = 0
    connections_made: int = 0
    open: int = 0  # connections open now, idle ones included
    peak_open: int = 0


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(our_role=h11.CLIENT)
        self.reused = False  # taken from the idle list: the agent may have closed it meanwhile
        self.answered = False  # some answer of this exchange arrived

    def close(self) -> None:
        self.writer.close()


def ssl_context(http: ConsulHTTP) -> Optional[ssl.SSLContext]:
    """The TLS settings the consul CLI would use (CONSUL_CACERT, client cert, SSL_VERIFY); None for http."""
    if http.scheme != "https":
        return None
    context = ssl.create_default_context(cafile=http.cacert or None)
    if not http.ssl_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if http.client_cert:
        context.load_cert_chain(http.client_cert, http.client_key or None)
    return context


class Pool:
    """Requests to one agent over at most `max_connections` connections. Use from one event loop."""

    def __init__(self, http: ConsulHTTP, max_connections: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.http = http
        self.host, self.port = http.host_port
        self.max_connections = max_connections
        self.timeout = timeout
        self.counters = Counters()
        self._ssl = ssl_context(http)
        self._idle: List[_Connection] = []
        self._waiters: Deque[asyncio.Future] = collections.deque()

    async def get(
        self,
        path: str,
        params: Sequence[Tuple[str, str]] = (),
        wait_seconds: Optional[float] = None,
    ) -> Answer:
        """GET path?params. `wait_seconds`: this is a blocking query (the read timeout allows for it).

        A 404 is an Answer with body None (a missing KV key); any other status but 200 is ConsulException.
        """
        # Every byte of a key is the key: a space, `?`, `%` or any non-ASCII character is percent-encoded.
        target = urllib.parse.quote(path, safe="/") + (
            "?" + urllib.parse.urlencode(list(params)) if params else ""
        )
        timeout = self.timeout if wait_seconds is None else wait_seconds * 17 / 16 + BLOCKING_MARGIN
        for attempt in (1, 2):
            connection = await self._acquire()
            reusable = False
            try:
                status, headers, body = await asyncio.wait_for(self._exchange(connection, target), timeout)
                reusable = connection.h11.our_state is h11.DONE and connection.h11.their_state is h11.DONE
                break
            except asyncio.TimeoutError:
                raise ConsulException(f"GET {path}: no answer within {timeout:.0f}s") from None
            except (OSError, h11.ProtocolError, ssl.SSLError, UnicodeError) as e:
                # A kept connection the agent closed while it was idle fails before any answer:
                # that is no failed read, so it is tried once more on a new connection.
                if attempt == 1 and connection.reused and not connection.answered:
                    continue
                raise ConsulException(f"GET {path}: {type(e).__name__}: {e}") from None
            finally:
                self._release(connection, reusable)
        index = _index(headers.get(b"x-consul-index"), path)
        if status == 404:
            return Answer(status, index, None)
        if status != 200:
            text = body[:200].decode("utf-8", "replace").strip()
            raise ConsulException(f"{status} {text} (GET {path})")
        try:
            return Answer(status, index, json.loads(body.decode("utf-8")) if body else None)
        except (UnicodeDecodeError, ValueError) as e:
            raise ConsulException(f"could not decode JSON: {e} (GET {path})") from None

    async def close(self) -> None:
        for connection in self._idle:
            connection.close()
            self.counters.open -= 1
        self._idle.clear()

    # -- connections --------------------------------------------------------------------------------

    async def _acquire(self) -> _Connection:
        if self._idle:
            connection = self._idle.pop()
            connection.reused, connection.answered = True, False
            return connection
        if self.counters.open < self.max_connections:
            self.counters.open += 1  # reserved before the connect, which yields
            self.counters.peak_open = max(self.counters.peak_open, self.counters.open)
        else:
            # Every connection is in use: wait for one to be handed over (or for its slot: None).
            handed: asyncio.Future = asyncio.get_running_loop().create_future()
            self._waiters.append(handed)
            try:
                connection = await handed
            except asyncio.CancelledError:
                if handed.done() and not handed.cancelled():
                    self._hand_over(handed.result())  # handed to us as we were cancelled: pass it on
                raise
            if connection is not None:
                connection.reused, connection.answered = True, False
                return connection
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host, self.port, ssl=self._ssl, server_hostname=self.host if self._ssl else None
                ),
                min(self.timeout, 5.0),
            )
        except BaseException as e:
            self._hand_over(None)
            if isinstance(e, (OSError, asyncio.TimeoutError, ssl.SSLError)):
                where = f"{self.host}:{self.port}"
                raise ConsulException(f"cannot connect to {where}: {type(e).__name__}: {e}") from None
            raise
        self.counters.connections_made += 1
        return _Connection(reader, writer)

    def _release(self, connection: _Connection, reusable: bool) -> None:
        if reusable:
            connection.h11.start_next_cycle()
            self._hand_over(connection)
        else:
            connection.close()
            self._hand_over(None)

    def _hand_over(self, connection: Optional[_Connection]) -> None:
        """A connection (or, None, the slot of one that closed) goes to the first waiter, else back."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        if connection is not None and len(self._idle) < IDLE_KEPT:
            self._idle.append(connection)
            return
        if connection is not None:
            connection.close()
        self.counters.open -= 1

    # -- one exchange ---------------------------------------------------------------------------

    async def _exchange(self, connection: _Connection, target: str) -> Tuple[int, dict, bytes]:
        conn = connection.h11
        headers = [
            ("Host", f"{self.host}:{self.port}"),
            ("User-Agent", USER_AGENT),
            ("Accept", "application/json"),
        ]
        if self.http.token:
            headers.append(("X-Consul-Token", self.http.token))
        connection.writer.write(conn.send(h11.Request(method="GET", target=target, headers=headers)))
        connection.writer.write(conn.send(h11.EndOfMessage()))
        await connection.writer.drain()
        self.counters.requests += 1
        status, response_headers, chunks, size = 0, {}, [], 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await connection.reader.read(65536)
                self.counters.bytes_received += len(data)
                connection.answered = connection.answered or bool(data)
                conn.receive_data(data)  # b"" is the end of the stream: h11 raises if that is early
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                response_headers = {name.lower(): value for name, value in event.headers}
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY:
                    raise OSError(f"answer larger than {MAX_BODY} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, response_headers, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                raise OSError("connection closed before the answer ended")


def _index(raw: Optional[bytes], path: str) -> int:
    if raw is None:
        return 0
    try:
        return max(0, int(raw))
    except ValueError:
        raise ConsulException(f"GET {path}: bad X-Consul-Index {raw[:40]!r}") from None
