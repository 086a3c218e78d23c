"""Keep the application's services registered with the local agent while it runs.

Every field of a registration (registration.py validated them) goes to the agent as given; a TTL
check is passed by this loop, three times per TTL, for as long as it runs.

Runs as the built-in program `register` under `basenode run`, started after the application and
so stopped before it (supervise stops in reverse start order). On SIGTERM it deregisters first,
then drains (drain.py): it exits once no new connection has reached the application's ports for
`drain_quiet` seconds and none is open any more, or after `drain` seconds at most, so that every
other node has dropped this instance from its routing before the application itself is asked to
stop: no request is sent to an instance that is going.

It deregisters rather than putting the services in maintenance: a service in maintenance keeps
its health check, which the local agent goes on running against the application's port, and
those connections would keep the drain from ever going quiet.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any, Dict, Optional

from . import consul, drain, durations
from .config import Service, Settings

log = logging.getLogger(__name__)
REFRESH_SECONDS = 10.0  # re-check that the agent still has our services (an agent restart forgets them)
BACKOFF_MAX = 10.0
LEAVE_WAIT_SECONDS = 3.0  # past the drain, how long the stop waits for the agent's graceful leave


def check_id(service: Service) -> str:
    """Consul's own ID for a service's one check, given explicitly so that a TTL check can be passed."""
    return f"service:{service.service_id}"


def check_definition(service: Service) -> Optional[Dict[str, Any]]:
    """The agent-side health check for `service`, as Consul's API spells it. The agent runs it locally,
    except a TTL check, which basenode passes while the application runs."""
    timed = {"Interval": service.check_interval, "Timeout": service.check_timeout}
    if service.check_http:
        url = service.check_http
        if not url.startswith(("http://", "https://")):
            url = f"http://127.0.0.1:{service.port}/{url.lstrip('/')}"
        check: Dict[str, Any] = {"HTTP": url, **timed}
    elif service.check_tcp:
        check = {"TCP": f"127.0.0.1:{service.port}", **timed}
    elif service.check_grpc:
        check = {"GRPC": service.check_grpc, **timed}
    elif service.check_ttl:
        check = {"TTL": service.check_ttl}
    else:
        return None
    check = {"CheckID": check_id(service), "Name": f"Service '{service.name}' check", **check}
    if service.check_deregister_after:
        check["DeregisterCriticalServiceAfter"] = service.check_deregister_after
    return check


def definition(service: Service) -> Dict[str, Any]:
    """The registration of `service`, as /v1/agent/service/register takes it."""
    body: Dict[str, Any] = {
        "ID": service.service_id,
        "Name": service.name,
        "Port": service.port,
        "Tags": list(service.tags),
    }
    if service.address:
        body["Address"] = service.address
    if service.meta:
        body["Meta"] = dict(service.meta)
    if service.weight:
        body["Weights"] = {"Passing": service.weight[0], "Warning": service.weight[1]}
    check = check_definition(service)
    if check is not None:
        body["Check"] = check
    return body


def ensure_registered(client: Any, settings: Settings) -> int:
    """Register every service the agent does not have, and pass every TTL check; how many were
    (re)registered."""
    present = client.agent.services()
    added = 0
    for service in settings.services:
        if service.service_id not in present:
            consul.register_definition(client, definition(service))
            log.info("registered %s (id %s, port %d)", service.name, service.service_id, service.port)
            added += 1
        if service.check_ttl:
            consul.pass_ttl(client, check_id(service))
    return added


def refresh_seconds(settings: Settings) -> float:
    """How often to look again: every REFRESH_SECONDS, and three times per TTL, so that a TTL check
    never lapses while the application runs."""
    ttls = [durations.parse_wait(s.check_ttl) for s in settings.services if s.check_ttl]
    return min([REFRESH_SECONDS, *(ttl / 3 for ttl in ttls)])


def deregister_all(client: Any, settings: Settings) -> None:
    for service in settings.services:
        try:
            consul.deregister_service(client, service.service_id)
            log.info("deregistered %s (id %s)", service.name, service.service_id)
        except consul.ERRORS as e:
            log.warning("could not deregister %s: %s", service.service_id, e)


def run(settings: Settings, leave: bool = False) -> int:
    """`basenode register`: until SIGTERM/SIGINT; then deregister, drain, exit 0.

    With `leave` (basenode runs the agent), the agent leaves the cluster during the drain: a
    graceful leave takes seconds, and done after the drain it would make every stop that long.
    """
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    client = consul.make_client(settings.consul_http, timeout=5.0)
    refresh = refresh_seconds(settings)
    failures = 0
    while not stop.is_set():
        try:
            ensure_registered(client, settings)
        except consul.ERRORS as e:
            failures += 1
            if failures == 1:
                log.warning("cannot register with the agent yet (retrying): %s", e)
            stop.wait(min(BACKOFF_MAX, 0.2 * 2 ** min(failures, 6)))
            continue
        failures = 0
        stop.wait(refresh)
    deregister_all(client, settings)
    leaving = threading.Thread(target=_leave, args=(client,), name="leave", daemon=True) if leave else None
    if leaving is not None:
        leaving.start()
    if settings.drain > 0:
        drain_connections(settings)
    if leaving is not None:
        leaving.join(timeout=LEAVE_WAIT_SECONDS)
    return 0


def drain_connections(settings: Settings) -> None:
    """Wait until the application's ports have gone quiet and their connections have finished
    (at most `drain` seconds), and log how long that took and why it ended."""
    ports = sorted({service.port for service in settings.services})
    log.info(
        "draining: ports %s, until no new connection for %g s and none open, at most %g s",
        ", ".join(map(str, ports)) or "(none)",
        settings.drain_quiet,
        settings.drain,
    )
    started = time.monotonic()
    try:
        outcome = drain.watch(ports, settings.drain_quiet, settings.drain)
    except OSError as e:
        log.warning("%s; draining the whole %g s", e, settings.drain)
        time.sleep(max(0.0, started + settings.drain - time.monotonic()))
        return
    log.info("%s", drain.describe(outcome, settings.drain_quiet))


def _leave(client: Any) -> None:
    try:
        consul.leave(client)
        log.info("the agent left the cluster")
    except consul.ERRORS as e:
        log.warning("the agent did not leave the cluster gracefully: %s", e)
