"""Whatever a local client sends to the status endpoint or the control socket, basenode keeps serving.

One real `basenode run` (its agent, the sync loop, HAProxy) takes every example: malformed, huge,
slow (sent in pieces with pauses) and truncated requests, to the status endpoint (served by the sync
process) and to PID 1's control socket. After each example both still answer a well-formed request;
at the end the sync process holds as many threads as before, PID 1 is still single-threaded, and
neither grew by more than a few MB. An answer to a bad request is a well-formed error, never a hang
or a traceback. (Issue 12's fuzz suite; the deterministic profile of conftest.py applies.)
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from basenode import control
from tests.support import procs
from tests.support.basenode_run import Basenode
from tests.support.consul_agent import ConsulAgent
from tests.support.ports import free_port
from tests.support.waiting import eventually

EXAMPLES = 300  # per test: each is a few real round trips (about 20 ms)
STATUS_LINE_RE = re.compile(rb"^HTTP/1\.[01] (\d{3}) ")
KNOWN_CODES = {200, 400, 404, 405, 408, 414, 431, 503}
RSS_GROWTH_KIB = 20 * 1024


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


class Target:
    """The running node, and the facts to compare with at the end."""

    def __init__(self, node: Basenode) -> None:
        self.node = node
        host, port = node.status_addr.rsplit(":", 1)
        self.status = (host, int(port))
        self.control = str(node.state_dir / control.SOCKET_NAME)
        self.sync_pid = next(p["pid"] for p in node.status()["programs"] if p["name"] == "sync")
        self.pid1 = node.proc.pid
        self.before = self.facts()

    def facts(self) -> Tuple[int, int, int, int]:
        """(sync threads, sync RSS KiB, PID 1 threads, PID 1 RSS KiB)."""
        return (
            procs.threads(self.sync_pid),
            rss_kib(self.sync_pid),
            procs.threads(self.pid1),
            rss_kib(self.pid1),
        )


@pytest.fixture(scope="module")
def target(consul_agent_session: ConsulAgent, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    node = Basenode(consul_agent_session, tmp_path_factory.mktemp("clients"), f"web:{free_port()}")
    try:
        eventually(node.healthy, timeout=60, what="/health 200")
        found = Target(node)
        yield found
        # The bounds, after every example of the module.
        sync_threads, sync_rss, pid1_threads, pid1_rss = found.facts()
        assert sync_threads <= found.before[0] + 1, (found.before, found.facts())
        assert pid1_threads == 1, "PID 1 stays single-threaded"
        assert sync_rss - found.before[1] < RSS_GROWTH_KIB, (found.before, found.facts())
        assert pid1_rss - found.before[3] < RSS_GROWTH_KIB, (found.before, found.facts())
        assert node.proc.poll() is None
    finally:
        node.stop()


# --- what clients send ---------------------------------------------------------------------------

methods = st.sampled_from(["GET", "HEAD", "POST", "get", "G\x00T", "", "PRI"]) | st.text(max_size=20)
paths = st.sampled_from(["/health", "/status", "/metrics", "/", "*", "/health?x=1"]) | st.text(max_size=60)
versions = st.sampled_from(["HTTP/1.0", "HTTP/1.1", "HTTP/2", "HTTP/1.1\r", "", "FTP/1.0"])
header = st.tuples(st.text(max_size=30), st.text(max_size=80)).map(lambda kv: f"{kv[0]}: {kv[1]}")


@st.composite
def http_requests(draw: st.DrawFn) -> bytes:
    """Malformed or well-formed request heads, sometimes huge, sometimes raw bytes."""
    kind = draw(st.sampled_from(["head", "bytes", "huge_line", "huge_headers"]))
    if kind == "bytes":
        return draw(st.binary(max_size=2000))
    if kind == "huge_line":
        return b"GET /" + b"a" * draw(st.integers(4000, 200_000)) + b" HTTP/1.0\r\n\r\n"
    if kind == "huge_headers":
        count, size = draw(st.integers(1, 2000)), draw(st.integers(1, 5000))
        return b"GET /health HTTP/1.0\r\n" + (b"X-Fill: " + b"b" * size + b"\r\n") * count + b"\r\n"
    eol = draw(st.sampled_from(["\r\n", "\n", "\r"]))
    lines = [f"{draw(methods)} {draw(paths)} {draw(versions)}", *draw(st.lists(header, max_size=8))]
    return (eol.join(lines) + eol + eol).encode("utf-8", "surrogatepass")


def pieces(data: bytes, draw: st.DrawFn) -> List[bytes]:
    """`data` cut into 1-4 pieces (sent with short pauses between them: a slow client)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


@st.composite
def deliveries(draw: st.DrawFn, requests: st.SearchStrategy[bytes]) -> Tuple[List[bytes], bool]:
    """(pieces to send, truncated: the last part is never sent before the client closes)."""
    data = draw(requests)
    truncated = draw(st.booleans())
    if truncated and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    return pieces(data, draw), truncated


def send(sock: socket.socket, parts: List[bytes], pause: float) -> None:
    with contextlib.suppress(OSError):  # the server may answer (and close) before the end: fine
        for i, part in enumerate(parts):
            if i:
                time.sleep(pause)
            sock.sendall(part)
        sock.shutdown(socket.SHUT_WR)  # done sending: a truncated request ends here


def receive(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while len(data) < 1_000_000:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


# --- the properties ----------------------------------------------------------------------------


@settings(max_examples=EXAMPLES)
@given(delivery=deliveries(http_requests()), pause=st.sampled_from([0.0, 0.0, 0.01, 0.05]))
def test_the_status_endpoint_answers_anything_with_a_well_formed_answer_and_keeps_serving(
    target: Target, delivery: Tuple[List[bytes], bool], pause: float
) -> None:
    parts, _ = delivery
    with socket.create_connection(target.status, timeout=15) as sock:
        send(sock, parts, pause)
        answer = receive(sock)
    if answer:  # nothing at all is the answer to a request that never ended (closed unanswered)
        m = STATUS_LINE_RE.match(answer)
        assert m is not None and int(m.group(1)) in KNOWN_CODES, answer[:200]
        assert b"Traceback" not in answer
    code, _ = target.node.get("/health")
    assert code in (200, 503)  # answered; healthy is /health's own business


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
RUNNING = {"consul", "sync", "haproxy", "app"}
program_names = st.text(max_size=20).filter(lambda name: name not in RUNNING)
requests_for_pid1 = st.one_of(
    st.fixed_dictionaries(
        {"op": st.sampled_from(["programs", "signal", "restart", "nope"])},
        optional={"program": program_names, "signal": st.text(max_size=10), "if_running": json_values},
    ),
    json_values,
).map(lambda value: json.dumps(value).encode() + b"\n")
control_requests = st.one_of(
    requests_for_pid1,
    st.binary(max_size=3000),
    st.integers(1, 20_000).map(lambda depth: b"[" * depth + b"\n"),  # deep nesting
    st.integers(4097, 100_000).map(lambda size: b'"' + b"x" * size + b'"\n'),  # huge
)


@settings(max_examples=EXAMPLES)
@given(delivery=deliveries(control_requests), pause=st.sampled_from([0.0, 0.0, 0.01, 0.05]))
def test_pid1s_control_socket_answers_anything_with_an_error_or_an_answer_and_keeps_serving(
    target: Target, delivery: Tuple[List[bytes], bool], pause: float
) -> None:
    parts, _ = delivery
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(15)
        sock.connect(target.control)
        send(sock, parts, pause)
        answer = receive(sock)
    if answer:
        reply = json.loads(answer.split(b"\n", 1)[0])
        assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), answer[:200]
    assert control.request(Path(target.node.state_dir), {"op": "programs"})["ok"] is True
