"""A thin layer over py-consul for the agent's own API: join, leave, leader, register (the agent's
config: agent.py). The watch reads the catalog through consul_async.py instead: blocking queries on
one event loop, not a thread each.

Two things py-consul 1.6.1 does not do for us, done here:
- a read timeout on every request (py-consul passes none to requests, so a hung agent would hang us
  forever);
- the token given in ConsulHTTP wins over py-consul's own reading of CONSUL_HTTP_TOKEN (basenode.config has
  already applied the precedence rules).
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
import warnings
from typing import Any, Dict, Mapping, Sequence, Tuple

# The zipapp bundles no charset detector (requirements/runtime.lock says why); requests warns about
# that at import, once, in every process. Consul's answers are decoded as UTF-8 (see _send).
warnings.filterwarnings("ignore", message="Unable to find acceptable character detection dependency")

import consul as pyconsul  # noqa: E402
import consul.std  # noqa: E402
import requests  # noqa: E402
from consul.callback import CB  # noqa: E402

from .config import ConfigError, ConsulHTTP, Settings, check_join_address  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0  # seconds, for every request that is not a blocking query
# What a failed request looks like, whichever layer noticed: Consul's answer (4xx/5xx, bad JSON)
# or the transport (refused, reset, timed out, TLS).
ERRORS = (pyconsul.ConsulException, requests.RequestException, OSError, ValueError)


class TimedHTTPClient(consul.std.HTTPClient):
    """py-consul's requests-based client with a read timeout on every request."""

    def __init__(self, *args: Any, timeout: float = DEFAULT_TIMEOUT, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout = timeout

    def _send(
        self, method: str, callback: Any, path: str, params: Any, headers: Any, data: Any = None
    ) -> Any:
        timeout = self.timeout
        response = self.session.request(
            method,
            self.uri(path, params),
            headers=headers,
            data=data,
            verify=self.verify,
            cert=self.cert,
            timeout=(min(self.timeout, 5.0), timeout),
        )
        # Consul's API speaks UTF-8 JSON but names no charset; without this, requests would guess
        # the encoding of every body (and could guess wrong for a non-ASCII KV value or tag).
        response.encoding = "utf-8"
        try:
            return callback(self.response(response))
        except (AttributeError, TypeError, KeyError, IndexError) as e:
            # py-consul's decoding assumes Consul's shapes (e.g. KV items are objects): an answer of
            # another shape is Consul misbehaving, an error like a 500, not a bug of ours.
            raise pyconsul.ConsulException(
                f"unexpected answer from {path}: {type(e).__name__}: {e}"
            ) from None

    def get(self, callback, path, params=None, headers=None, **_kwargs):  # type: ignore[override]
        return self._send("GET", callback, path, params, headers)

    def put(self, callback, path, params=None, data="", headers=None, **_kwargs):  # type: ignore[override]
        return self._send("PUT", callback, path, params, headers, data)

    def delete(self, callback, path, params=None, headers=None, **_kwargs):  # type: ignore[override]
        return self._send("DELETE", callback, path, params, headers)

    def post(self, callback, path, params=None, data="", headers=None, **_kwargs):  # type: ignore[override]
        return self._send("POST", callback, path, params, headers, data)

    def close(self) -> None:
        self.session.close()


class Client(consul.std.Consul):
    """py-consul's Consul with the HTTP client above. Build it with make_client()."""

    http: TimedHTTPClient

    def http_connect(self, host: str, port: int, scheme, verify=True, cert=None):  # type: ignore[override]
        return TimedHTTPClient(host, port, scheme, verify, cert)


def make_client(http: ConsulHTTP, timeout: float = DEFAULT_TIMEOUT) -> Client:
    """A client for `http` (addr, token, TLS). `timeout` bounds every non-blocking request."""
    host, port = http.host_port
    verify: Any = http.ssl_verify
    if http.ssl_verify and http.cacert:
        verify = http.cacert  # requests takes a CA bundle path in place of True
    cert: Any = None
    if http.client_cert:
        cert = (http.client_cert, http.client_key) if http.client_key else http.client_cert
    client = Client(host=host, port=port, scheme=http.scheme, verify=verify, cert=cert)
    client.http.timeout = timeout
    # py-consul prefers $CONSUL_HTTP_TOKEN over the argument; ConsulHTTP already applied our precedence.
    client.token = http.token
    return client


# --- agent ----------------------------------------------------------------------------------------


def leader(client: pyconsul.Consul) -> str:
    """The cluster leader's address, or '' while there is none."""
    answer = client.status.leader()
    if answer is not None and not isinstance(answer, str):
        raise pyconsul.ConsulException(f"status/leader: not an address: {str(answer)[:100]!r}")
    return answer or ""


def join(client: pyconsul.Consul, address: str, wan: bool = False) -> bool:
    """Ask the local agent to join `address` (raises on failure, as Consul answers 500 when it cannot)."""
    return bool(client.agent.join(address, wan=wan))


def leave(client: pyconsul.Consul) -> bool:
    """Ask the local agent to leave the cluster gracefully; the agent then shuts down."""
    return bool(client.http.put(CB.boolean(), "/v1/agent/leave"))


def join_addresses(settings: Settings, arguments: Sequence[str]) -> Tuple[Tuple[str, ...], str]:
    """The addresses to join and where they came from: the arguments, else what the settings found
    (CONSUL_JOIN, the config file, link variables). ConfigError names an address that is not host[:port]."""
    if arguments:
        return tuple(check_join_address(a, "arguments") for a in arguments), "arguments"
    return settings.agent.join, settings.agent.join_source


def join_command(
    settings: Settings,
    arguments: Sequence[str],
    timeout: float = 60.0,
) -> int:
    """`basenode join`: ask the local agent to join until one address works or `timeout` passes.

    Backoff between rounds doubles from 0.5 s to 5 s, with jitter. 0 once joined; 1 on timeout; 2 when
    there is nothing (valid) to join. Messages name what was tried.
    """
    try:
        addresses, source = join_addresses(settings, arguments)
    except ConfigError as e:
        print(f"basenode: join: {e}", file=sys.stderr)
        return 2
    if not addresses:
        print(
            "basenode: join: no address to join: give ADDRESS, set CONSUL_JOIN, or link a Consul server "
            "(<ALIAS>_PORT_8301_TCP_ADDR)",
            file=sys.stderr,
        )
        return 2
    client = make_client(settings.consul_http, timeout=min(DEFAULT_TIMEOUT, max(timeout, 1.0)))
    deadline = time.monotonic() + timeout
    delay = 0.5
    errors: Dict[str, str] = {}
    while True:
        for address in addresses:
            try:
                join(client, address)
            except ERRORS as e:
                errors[address] = f"{type(e).__name__}: {e}".replace("\n", " ")[:200]
                continue
            log.info("joined %s (from %s)", address, source)
            print(f"joined {address}")
            return 0
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(remaining, delay * (0.5 + random.random() / 2)))
        delay = min(delay * 2, 5.0)
    tried = "; ".join(f"{address}: {error}" for address, error in errors.items())
    print(
        f"basenode: join: could not join {', '.join(addresses)} (from {source}) within {timeout:g}s: {tried}",
        file=sys.stderr,
    )
    return 1


def register_definition(client: pyconsul.Consul, definition: Mapping[str, Any]) -> bool:
    """Register a service with the local agent: `definition` as /v1/agent/service/register takes it
    (register.py builds it), so that every field Consul knows (Meta, Weights, the check's
    DeregisterCriticalServiceAfter...) reaches it as given."""
    return bool(client.http.put(CB.boolean(), "/v1/agent/service/register", data=json.dumps(definition)))


def pass_ttl(client: pyconsul.Consul, check_id: str) -> bool:
    return bool(client.agent.check.ttl_pass(check_id))


def deregister_service(client: pyconsul.Consul, service_id: str) -> bool:
    return bool(client.agent.service.deregister(service_id))
