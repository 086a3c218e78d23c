"""A thin layer over py-consul: the client, blocking reads, join, register (the agent's config: agent.py).

Nothing here knows about templates or HAProxy. Every read returns Consul's data as Consul sent it;
validation happens in snapshot.py before anything reaches a config file.

Two things py-consul 1.6.1 does not do for us, done here:
- a read timeout on every request (py-consul passes none to requests, so a hung agent would hang us
  forever): blocking reads need timeout > wait + wait/16 (Consul adds up to wait/16 of jitter itself);
- the token given in ConsulHTTP wins over py-consul's own reading of CONSUL_HTTP_TOKEN (config.py has
  already applied the precedence rules).
"""

from __future__ import annotations

import logging
import random
import re
import sys
import threading
import time
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

# The zipapp bundles no charset detector (requirements/runtime.lock says why); requests warns about
# that at import, once, in every process. Consul's answers are decoded as UTF-8 (see _send).
warnings.filterwarnings("ignore", message="Unable to find acceptable character detection dependency")

import consul as pyconsul  # noqa: E402
import consul.std  # noqa: E402
import requests  # noqa: E402
from consul.callback import CB  # noqa: E402

from .config import ROUTES_KV_PREFIX, ConfigError, ConsulHTTP, Settings, check_join_address  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0  # seconds, for every request that is not a blocking query
# What a failed request looks like, whichever layer noticed: Consul's answer (4xx/5xx, bad JSON)
# or the transport (refused, reset, timed out, TLS).
ERRORS = (pyconsul.ConsulException, requests.RequestException, OSError, ValueError)
PASSING = ("passing",)
# What snapshot.instance_from_health reads of a service; the rest of the catalog dump is dropped.
SERVICE_FIELDS = ("ID", "Service", "Address", "Port", "Tags", "Meta", "Weights")
PASSING_OR_WARNING = ("passing", "warning")


class CountingHTTPClient(consul.std.HTTPClient):
    """py-consul's requests-based client with a read timeout and a request counter (for status and bench)."""

    def __init__(self, *args: Any, timeout: float = DEFAULT_TIMEOUT, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout = timeout
        self.requests = 0
        self._lock = threading.Lock()

    def _send(
        self, method: str, callback: Any, path: str, params: Any, headers: Any, data: Any = None
    ) -> Any:
        with self._lock:
            self.requests += 1
        timeout = blocking_timeout(params) or self.timeout
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

    http: CountingHTTPClient

    def http_connect(self, host: str, port: int, scheme, verify=True, cert=None):  # type: ignore[override]
        return CountingHTTPClient(host, port, scheme, verify, cert)


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


def request_count(client: pyconsul.Consul) -> int:
    return getattr(client.http, "requests", 0)


# --- durations ------------------------------------------------------------------------------------

_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_WAIT = 600.0  # Consul caps `wait` at 10 minutes


def parse_wait(text: str) -> float:
    """Consul's (Go's) duration syntax ('5m', '30s', '1m30s', '500ms') -> seconds, capped at 10 minutes
    as Consul caps it. Raises ValueError."""
    text = text.strip() if isinstance(text, str) else ""
    position, total = 0, 0.0
    for match in _DURATION_PART_RE.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if not text or position != len(text) or total <= 0:
        raise ValueError(f"expected a duration like 5m or 30s, got {text!r}")
    return min(total, MAX_WAIT)


def format_wait(seconds: float) -> str:
    return f"{max(1, int(seconds))}s" if seconds >= 1 else f"{max(1, int(seconds * 1000))}ms"


def blocking_timeout(params: Any) -> Optional[float]:
    """Read timeout for a request whose params carry `wait`: the wait, Consul's jitter (wait/16), a margin."""
    for name, value in params or ():
        if name == "wait":
            wait = parse_wait(str(value))
            return wait + wait / 16 + 10.0
    return None


# --- reads ----------------------------------------------------------------------------------------


def _index(raw: Any) -> int:
    try:
        return max(0, int(raw))
    except (TypeError, ValueError):
        raise pyconsul.ConsulException(f"bad X-Consul-Index {raw!r}") from None


def _objects(items: Any, what: str) -> List[Mapping[str, Any]]:
    """`items` when it is a list of JSON objects, as Consul answers; [] for no answer (404).

    Anything else is a broken answer, not an empty one: dropping the elements that are not objects
    would turn garbage from Consul into "no instances" and take every server out of HAProxy.
    """
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise pyconsul.ConsulException(f"{what}: not a list of objects: {str(items)[:100]!r}")
    return items


def health_service(
    client: pyconsul.Consul,
    service: str,
    include_warning: bool = False,
    index: int = 0,
    wait: Optional[str] = None,
) -> Tuple[int, List[Mapping[str, Any]]]:
    """Healthy entries of /v1/health/service/<service>: every check passing (or warning, if admitted).

    Fetched unfiltered and filtered here with healthy(), so that this and the catalog dump agree exactly.
    """
    raw_index, answer = client.health.service(service, index=index or None, wait=wait)
    entries = [e for e in _objects(answer, service) if healthy(e.get("Checks"), include_warning)]
    return _index(raw_index), entries


def healthy(checks: Any, include_warning: bool = False) -> bool:
    """Consul's `?passing` rule (no check anything but passing), widened to warning when asked."""
    admitted = PASSING_OR_WARNING if include_warning else PASSING
    if checks is None:
        return True
    if not isinstance(checks, Sequence):
        return False
    return all(isinstance(c, Mapping) and c.get("Status") in admitted for c in checks)


def catalog_dump(
    client: pyconsul.Consul, index: int = 0, wait: Optional[str] = None
) -> Tuple[int, List[Mapping[str, Any]]]:
    """Every node with its services and checks, in one read (/v1/internal/ui/nodes).

    Its index is the catalog's (nodes, services, checks), so one blocking query on it wakes on any change
    anywhere; see watch.py for why that shape was chosen.
    """
    params: List[Tuple[str, Any]] = []
    if index:
        params.append(("index", index))
        if wait:
            params.append(("wait", wait))
    headers = client.prepare_headers()
    raw_index, nodes = client.http.get(
        CB.json(index=True), "/v1/internal/ui/nodes", params=params, headers=headers
    )
    return _index(raw_index), _objects(nodes, "catalog dump")


def service_summaries(
    client: pyconsul.Consul, index: int = 0, wait: Optional[str] = None
) -> Tuple[int, Dict[str, Mapping[str, Any]]]:
    """One summary per service (/v1/internal/ui/services): name, tags, nodes, instance and check counts.

    Its index is the catalog's (nodes, services, checks): it moves on any change anywhere, and a
    service whose summary differs from the last one has surely changed (the converse does not hold:
    see watch.CatalogReader).
    """
    params: List[Tuple[str, Any]] = []
    if index:
        params.append(("index", index))
        if wait:
            params.append(("wait", wait))
    raw_index, items = client.http.get(
        CB.json(index=True), "/v1/internal/ui/services", params=params, headers=client.prepare_headers()
    )
    summaries = {i["Name"]: i for i in _objects(items, "service summaries") if isinstance(i.get("Name"), str)}
    return _index(raw_index), summaries


def service_entries(
    client: pyconsul.Consul, service: str, index: int = 0, wait: Optional[str] = None
) -> Tuple[int, List[Dict[str, Any]]]:
    """All entries of one service, healthy or not, trimmed as health_entries_from_dump trims them."""
    raw_index, entries = client.health.service(service, index=index or None, wait=wait)
    trimmed = [
        trim_entry(e.get("Node"), e.get("Service"), e.get("Checks")) for e in _objects(entries, service)
    ]
    return _index(raw_index), sorted(trimmed, key=_entry_order)


def trim_entry(node: Any, service: Any, checks: Any) -> Dict[str, Any]:
    """A health entry with only what a snapshot reads; checks sorted, so that equal states compare equal."""
    node = node if isinstance(node, Mapping) else {}
    service = service if isinstance(service, Mapping) else {}
    kept_checks = [
        {"CheckID": c.get("CheckID"), "Status": c.get("Status")}
        for c in checks or ()
        if isinstance(c, Mapping)
    ]
    return {
        "Node": {"Node": node.get("Node"), "Address": node.get("Address")},
        "Service": {key: service.get(key) for key in SERVICE_FIELDS},
        "Checks": sorted(kept_checks, key=lambda c: str(c["CheckID"])),
    }


def _entry_order(entry: Mapping[str, Any]) -> Tuple[str, str]:
    return str(entry["Node"]["Node"]), str(entry["Service"]["ID"])


def health_entries_from_dump(nodes: Sequence[Any]) -> Dict[str, List[Dict[str, Any]]]:
    """The dump regrouped as /v1/health/service/<name> would answer: {service: [{Node, Service, Checks}]}.

    An entry's checks are its node's checks plus its own, as in the health endpoint. Only the fields a
    snapshot reads are kept (trim_entry): at 5,000 instances the full dump is megabytes.
    """
    by_service: Dict[str, List[Dict[str, Any]]] = {}
    for node in nodes:
        if not isinstance(node, Mapping):
            continue
        node_checks: List[Mapping[str, Any]] = []
        own_checks: Dict[str, List[Mapping[str, Any]]] = {}
        for check in node.get("Checks") or ():
            if isinstance(check, Mapping):
                service_id = check.get("ServiceID")
                if service_id:
                    own_checks.setdefault(service_id, []).append(check)
                else:
                    node_checks.append(check)
        for service in node.get("Services") or ():
            if not isinstance(service, Mapping) or not isinstance(service.get("Service"), str):
                continue
            checks = node_checks + own_checks.get(service.get("ID"), [])  # type: ignore[arg-type]
            by_service.setdefault(service["Service"], []).append(trim_entry(node, service, checks))
    for entries in by_service.values():
        entries.sort(key=_entry_order)
    return by_service


def catalog_services(
    client: pyconsul.Consul, index: int = 0, wait: Optional[str] = None
) -> Tuple[int, Mapping[str, Any]]:
    """Every service name in the catalog -> its tags (/v1/catalog/services), as Consul sent them."""
    raw_index, services = client.catalog.services(index=index or None, wait=wait)
    if not isinstance(services, Mapping):
        raise pyconsul.ConsulException(f"catalog services is not an object: {type(services).__name__}")
    return _index(raw_index), services


def local_node(
    client: pyconsul.Consul, index: int = 0, wait: Optional[str] = None
) -> Tuple[int, Dict[str, Any]]:
    """The agent's own node: name and datacenter from /v1/agent/self, address from the catalog.

    Blocks on /v1/catalog/node/<name>, whose index moves when the node's entry changes.
    """
    config = (agent_self(client) or {}).get("Config") or {}
    name = config.get("NodeName")
    raw_index, entry = client.catalog.node(str(name), index=index or None, wait=wait)
    node = (entry or {}).get("Node") or {} if isinstance(entry, Mapping) else {}
    return _index(raw_index), {
        "name": name,
        "datacenter": config.get("Datacenter"),
        "address": node.get("Address") if isinstance(node, Mapping) else None,
    }


def kv_get(
    client: pyconsul.Consul, key: str, index: int = 0, wait: Optional[str] = None
) -> Tuple[int, Optional[str]]:
    """One key's value as text (None when missing or not UTF-8; "" for a key with an empty value)."""
    raw_index, item = client.kv.get(key, index=index or None, wait=wait)
    if not isinstance(item, Mapping):
        return _index(raw_index), None
    value = item.get("Value")
    return _index(raw_index), "" if value is None else _text(value)  # Consul sends null for b""


def kv_recurse(
    client: pyconsul.Consul, prefix: str = ROUTES_KV_PREFIX, index: int = 0, wait: Optional[str] = None
) -> Tuple[int, Dict[str, Optional[str]]]:
    """Every key under `prefix` -> its value as text (None for a folder or a value that is not UTF-8)."""
    raw_index, items = client.kv.get(prefix, index=index or None, wait=wait, recurse=True)
    values: Dict[str, Optional[str]] = {}
    for item in _objects(items, prefix):
        if isinstance(item.get("Key"), str):
            values[item["Key"]] = _text(item.get("Value"))
    return _index(raw_index), values


def _text(value: Any) -> Optional[str]:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


# --- agent ----------------------------------------------------------------------------------------


def agent_self(client: pyconsul.Consul) -> Dict[str, Any]:
    return client.agent.self()


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


def register_service(
    client: pyconsul.Consul,
    name: str,
    port: int,
    service_id: Optional[str] = None,
    address: Optional[str] = None,
    tags: Sequence[str] = (),
    check: Optional[Mapping[str, Any]] = None,
) -> bool:
    """Register with the local agent; `check` is a check definition (py-consul's consul.Check.* build one)."""
    return bool(
        client.agent.service.register(
            name,
            service_id=service_id,
            address=address,
            port=port,
            tags=list(tags),
            check=dict(check) if check else None,
        )
    )


def deregister_service(client: pyconsul.Consul, service_id: str) -> bool:
    return bool(client.agent.service.deregister(service_id))
