"""A tiny Consul on loopback: real HTTP/1.1 (h11 on asyncio, in its own thread) and Consul's
blocking-query protocol, for the tests of consul_async.Pool and watch.Watcher.

A read with `index` at or past the current index blocks until the index moves, its `wait` runs out
or the client goes away; every answer carries X-Consul-Index. One index for the whole catalog (as
if every path were in one table): `set` and `wake` move it, which wakes every blocking read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Set, Tuple

import h11

from basenode import durations


@dataclass(frozen=True)
class Request:
    target: str  # as sent: path and query string
    path: str  # percent-decoded
    params: Dict[str, str]
    headers: Dict[str, str]  # lower-case names

    @property
    def blocking(self) -> bool:
        return int(self.params.get("index", "0")) > 0


class ClientGone(Exception):
    pass


class FakeConsul:
    """Answers GET path with `bodies[path]` as JSON (404 with no body when absent)."""

    def __init__(self) -> None:
        self.bodies: Dict[str, Any] = {}
        self.statuses: Dict[str, int] = {}  # path -> an error status to answer instead
        self.silent: Set[str] = set()  # paths never answered (a hung agent)
        self.chunked = False  # answer with Transfer-Encoding: chunked, in small pieces
        self.index = 10
        self.requests: List[Request] = []
        self.in_flight: Counter = Counter()  # blocking reads waiting now, per path
        self.most_in_flight: Counter = Counter()
        self.connections = 0  # accepted since start
        self.open = 0  # open now
        self.peak_open = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._moved: Optional[asyncio.Event] = None
        self._server: Optional[asyncio.AbstractServer] = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(5)
        assert self._server is not None
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- the test's side (any thread) ---------------------------------------------------------------

    def set(self, path: str, body: Any) -> None:
        """A new value at `path` (None: the path answers 404); moves the index."""
        with self._lock:
            if body is None:
                self.bodies.pop(path, None)
            else:
                self.bodies[path] = body
        self.wake()

    def wake(self) -> None:
        """Moves the index without changing any value, as a change elsewhere does."""
        with self._lock:
            self.index += 1
        self._loop.call_soon_threadsafe(self._notify)

    def reads(self, path: str) -> List[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def close(self) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # -- the server (its own thread) --------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._moved = asyncio.Event()
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

        self._loop.run_until_complete(start())
        ready.set()
        self._loop.run_forever()

    def _notify(self) -> None:
        assert self._moved is not None
        self._moved.set()
        self._moved = asyncio.Event()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(our_role=h11.SERVER)
        with self._lock:
            self.connections += 1
            self.open += 1
            self.peak_open = max(self.peak_open, self.open)
        try:
            while True:
                request = await self._next_request(conn, reader)
                if request is None:
                    return
                await self._answer(conn, reader, writer, request)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (ClientGone, ConnectionError, h11.ProtocolError, asyncio.CancelledError):
            return
        finally:
            with self._lock:
                self.open -= 1
            writer.close()

    async def _next_request(self, conn: h11.Connection, reader: asyncio.StreamReader) -> Optional[Request]:
        request: Optional[h11.Request] = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.ConnectionClosed):
                return None
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                target = request.target.decode()
                path, _, query = target.partition("?")
                return Request(
                    target=target,
                    path=urllib.parse.unquote(path, errors="strict"),  # as Go's net/url decodes it
                    params=dict(urllib.parse.parse_qsl(query)),
                    headers={k.decode().lower(): v.decode() for k, v in request.headers},
                )

    async def _answer(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: Request,
    ) -> None:
        with self._lock:
            self.requests.append(request)
        if re.search(r"%(?![0-9A-Fa-f]{2})", request.target.partition("?")[0]):
            await self._send(conn, writer, 400, b"invalid URL escape")  # as Go's net/http answers
            return
        if request.path in self.silent:
            await self._until_moved(reader, None, request.path, forever=True)
        if request.blocking:
            wait = durations.parse_wait(request.params.get("wait", "5m"))
            await self._until_moved(reader, int(request.params["index"]), request.path, wait=wait)
        with self._lock:
            status = self.statuses.get(request.path)
            body = self.bodies.get(request.path)
            index = self.index
        if status is not None:
            payload, status = b"rpc error: something broke", status
        elif body is None:
            payload, status = b"", 404
        else:
            payload, status = json.dumps(body).encode(), 200
        await self._send(conn, writer, status, payload, index)

    async def _send(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, payload: bytes, index: int = 0
    ) -> None:
        headers: List[Tuple[str, str]] = [
            ("Content-Type", "application/json"),
            ("X-Consul-Index", str(index)),
        ]
        if self.chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            headers.append(("Content-Length", str(len(payload))))
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
        pieces = [payload[i : i + 7] for i in range(0, len(payload), 7)] if self.chunked else [payload]
        for piece in pieces:
            if piece:
                writer.write(conn.send(h11.Data(data=piece)))
                await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _until_moved(
        self,
        reader: asyncio.StreamReader,
        index: Optional[int],
        path: str,
        wait: Optional[float] = None,
        forever: bool = False,
    ) -> None:
        """Until the index passes `index` or `wait` runs out; ClientGone when the client closes."""
        loop = asyncio.get_running_loop()
        deadline = None if wait is None else loop.time() + wait
        with self._lock:
            self.in_flight[path] += 1
            self.most_in_flight[path] = max(self.most_in_flight[path], self.in_flight[path])
        gone = asyncio.ensure_future(reader.read(1))
        try:
            while True:
                with self._lock:
                    if not forever and index is not None and self.index > index:
                        return
                assert self._moved is not None
                moved = asyncio.ensure_future(self._moved.wait())
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                done, _ = await asyncio.wait({gone, moved}, timeout=timeout, return_when="FIRST_COMPLETED")
                moved.cancel()
                if gone in done:
                    raise ClientGone()  # a client sends nothing while it waits: this is its EOF
                if not done:
                    return  # the wait ran out
        finally:
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gone
            with self._lock:
                self.in_flight[path] -= 1
