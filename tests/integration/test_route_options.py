"""Per-route HAProxy options in real traffic: a real Consul agent, `basenode run`, real backends.

What users rely on: `balance leastconn` sends a new request to the instance with none in flight; a
sticky cookie keeps a client on its instance, one added at runtime too; HAProxy's passive check takes
a killed instance out before Consul notices; TLS to the backend verifies the certificate against the
SNI; send_proxy tells the backend the client's address; a bad option in one KV route leaves that
route out, reported in /status, and every other route serving.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from basenode.output import haproxy
from tests.conftest import require_binary
from tests.support.backends import Backend, get, names_seen
from tests.support.basenode_run import serving
from tests.support.ports import free_port
from tests.support.waiting import eventually


def fetch(port: int, cookie: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """(body, the Set-Cookie header) of one GET on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Cookie": cookie} if cookie else {})
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200, (response.status, body)
        return body, response.getheader("Set-Cookie")
    finally:
        conn.close()


def servers_state(node, backend: str) -> Dict[str, haproxy.ServerState]:
    return haproxy.show_servers_state(node.settings.haproxy_stats_socket, backend).get(backend, {})


def web_instances(consul_agent, backends, *names: str) -> List[Backend]:
    """Backends named `names`, each registered as an instance `web-<name>` of service web."""
    started = [backends.start(name) for name in names]
    for backend in started:
        consul_agent.register("web", backend.port, service_id=f"web-{backend.name}")
    return started


def answers_while_one_request_is_held(port: int, group: List[Backend]) -> Tuple[str, List[str]]:
    """(the backend holding a request, the answers to 10 requests sent meanwhile)."""
    held = threading.Thread(target=get, args=(port, "/hold", 30), daemon=True)
    held.start()
    try:
        eventually(lambda: sum(b.holding for b in group) == 1, what="one request in flight")
        holder = next(b.name for b in group if b.holding)
        answers = []
        for _ in range(10):
            answers.append(get(port))
            # The client can read an answer before HAProxy counts that request as finished: a pause,
            # so the next one meets the servers' counts as they are between requests.
            time.sleep(0.02)
        return holder, answers
    finally:
        for backend in group:
            backend.server.release.set()
        held.join(timeout=10)
        for backend in group:
            backend.server.release.clear()


def test_balance_leastconn_sends_new_requests_to_the_instance_with_none_in_flight(
    consul_agent, backends, start_basenode
):
    a, b = web_instances(consul_agent, backends, "a", "b")
    port = free_port()
    consul_agent.kv_put("basenode/routes/web", f"{port}/http balance=leastconn")
    node = start_basenode("")
    eventually(serving(port, ["a", "b"]), timeout=30, what="web through its KV route")
    assert "    balance leastconn" in node.settings.haproxy_cfg.read_text()

    holder, answers = answers_while_one_request_is_held(port, [a, b])
    assert answers == ["b" if holder == "a" else "a"] * 10

    # The template's default for an http route, roundrobin, gives the busy instance its turns too.
    reloads = node.proc_info().reloads
    consul_agent.kv_put("basenode/routes/web", f"{port}/http")
    eventually(lambda: node.proc_info().reloads > reloads, what="the reload for the new balance")
    eventually(lambda: not node.proc_info().old_workers, timeout=30, what="the leastconn worker gone")
    assert "    balance roundrobin" in node.settings.haproxy_cfg.read_text()
    holder, answers = answers_while_one_request_is_held(port, [a, b])
    assert holder in answers and len(set(answers)) == 2


def test_a_sticky_cookie_keeps_a_client_on_its_instance_and_one_added_at_runtime_gets_its_own(
    consul_agent, backends, start_basenode
):
    web_instances(consul_agent, backends, "a", "b")
    port = free_port()
    node = start_basenode(f"web:{port}/http;cookie=BNSRV")
    eventually(serving(port, ["a", "b"]), timeout=30, what="web through basenode")
    before = node.proc_info()

    def cookies() -> Dict[str, str]:
        """backend name -> the cookie HAProxy gives a new client sent to it."""
        found: Dict[str, str] = {}
        for _ in range(12):
            name, header = fetch(port)
            assert header and header.startswith("BNSRV="), header
            found[name] = header.split(";")[0]
        return found

    first = cookies()
    assert sorted(first) == ["a", "b"] and len(set(first.values())) == 2
    for name, cookie in first.items():
        assert [fetch(port, cookie)[0] for _ in range(10)] == [name] * 10

    web_instances(consul_agent, backends, "c")
    eventually(serving(port, ["a", "b", "c"]), what="c added at runtime")
    later = cookies()
    assert later["a"] == first["a"] and later["b"] == first["b"]
    assert later["c"] not in ("BNSRV=", first["a"], first["b"])
    assert [fetch(port, later["c"])[0] for _ in range(10)] == ["c"] * 10
    after = node.proc_info()
    assert (after.reloads, after.workers) == (before.reloads, before.workers)  # c came by the runtime API


def test_the_passive_check_marks_a_killed_instance_down_before_consul_does(
    consul_agent, backends, start_basenode
):
    _, b = web_instances(consul_agent, backends, "a", "b")  # TTL checks of 10 minutes: Consul is slow
    port = free_port()
    # The active check once an hour: only the passive one can take b out within this test.
    node = start_basenode(f"web:{port}/http;observe=layer4;error_limit=1;check_interval=1h")
    eventually(serving(port, ["a", "b"]), timeout=30, what="web through basenode")
    name_b = next(n for n in servers_state(node, "web") if n.endswith("_web-b"))

    b.close()  # killed: its port refuses connections
    answers: List[str] = []

    def b_marked_down() -> bool:
        answers.extend(get(port) for _ in range(4))  # each one that tries b fails over to a
        return servers_state(node, "web")[name_b].op_state == 0

    eventually(b_marked_down, what="HAProxy to mark b down")
    assert set(answers) == {"a"}  # no request failed: the one that met b was retried on a
    statuses = {e["Service"]["ID"]: [c["Status"] for c in e["Checks"]] for e in consul_agent.health("web")}
    assert set(statuses["web-b"]) == {"passing"}  # Consul has not noticed
    assert names_seen(port, 10) == ["a"]


def make_certificate(directory: Path, host: str) -> Tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            require_binary("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={host}",
            "-addext", f"subjectAltName=DNS:{host}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_to_the_backend_verifies_the_certificate_against_the_sni(
    consul_agent, backends, start_basenode, tmp_path
):
    cert, key = make_certificate(tmp_path, "web.example")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(str(cert), str(key))
    a = backends.start("tls-a", tls=tls)
    consul_agent.register("web", a.port, service_id="web-a")
    consul_agent.register("wrong", a.port, service_id="wrong-a")
    web, wrong = free_port(), free_port()
    tls_options = f"ssl=true;ca_file={cert}"
    node = start_basenode(
        f"web:{web}/http;{tls_options};sni=web.example,wrong:{wrong}/http;{tls_options};sni=other.example"
    )
    eventually(serving(web, ["tls-a"]), timeout=30, what="web over TLS")
    with pytest.raises(RuntimeError, match="HTTP 503"):
        get(wrong)  # the certificate does not name other.example: HAProxy refuses the server
    before = node.proc_info()

    b = backends.start("tls-b", tls=tls)
    consul_agent.register("web", b.port, service_id="web-b")
    eventually(serving(web, ["tls-a", "tls-b"]), what="a TLS instance added at runtime")
    after = node.proc_info()
    assert (after.reloads, after.workers) == (before.reloads, before.workers)


class ProxyEcho:
    """A TCP backend that answers each connection with the first line it receives (the PROXY header)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                line = b""
                while not line.endswith(b"\r\n") and len(line) < 200:
                    chunk = conn.recv(1)
                    if not chunk:
                        break
                    line += chunk
                conn.sendall(line)

    def close(self) -> None:
        self.sock.close()


def test_send_proxy_gives_the_backend_the_clients_address(consul_agent, start_basenode):
    echo = ProxyEcho()
    try:
        consul_agent.register("echo", echo.port, service_id="echo-1")
        port = free_port()
        start_basenode(f"echo:{port};send_proxy=v1")

        def header() -> str:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                    return conn.recv(200).decode()
            except OSError:
                return ""  # no frontend yet

        line = eventually(lambda: header() or None, timeout=30, what="the PROXY header echoed")
        assert line.startswith("PROXY TCP4 127.0.0.1 127.0.0.1 ") and line.endswith(f" {port}\r\n")
    finally:
        echo.close()


def test_a_bad_option_in_one_kv_route_leaves_it_out_reported_and_every_other_route_serving(
    consul_agent, backends, start_basenode
):
    a, b = backends.start("a"), backends.start("b")
    consul_agent.register("web", a.port, service_id="web-a")
    consul_agent.register("cache", b.port, service_id="cache-b")
    web, cache = free_port(), free_port()
    consul_agent.kv_put("basenode/routes/web", f"{web}/http balance=first")
    consul_agent.kv_put("basenode/routes/cache", f"{cache}/http balance=fastest")
    node = start_basenode("")
    eventually(serving(web, ["a"]), timeout=30, what="the good KV route")

    def refused() -> Dict[str, str]:
        return {r["key"]: r["reason"] for r in node.status()["routes_refused"]}

    eventually(lambda: "basenode/routes/cache" in refused(), what="the bad route reported")
    assert 'option balance="fastest"' in refused()["basenode/routes/cache"]
    assert "basenode/routes/cache" in node.output() and "fastest" in node.output()
    eventually(node.healthy, timeout=30, what="/health 200: a bad KV route is no failure")

    consul_agent.kv_put("basenode/routes/cache", f"{cache}/http balance=leastconn")
    eventually(serving(cache, ["b"]), what="the corrected route")
    eventually(lambda: refused() == {}, what="nothing refused any more")
    assert get(web) == "a"
