"""`[services.NAME]` and registrator's `SERVICE_*` variables: the services basenode registers."""

from __future__ import annotations

from typing import Mapping, Tuple

from .errors import ConfigError, show
from .file import Table, Tables
from .layers import Environ
from .model import Service


def load_services(environ: Environ, tables: Tables) -> Tuple[Service, ...]:
    """Registrator's variables and [services.NAME] tables, parsed by registration.py."""
    from .. import registration

    services = registration.from_environment(environ)
    for name, values in tables.top.table("services").items():
        t = Table(tables.file, f"services.{name}", values if isinstance(values, Mapping) else {})
        if not isinstance(values, Mapping):
            raise t.fail("", f"expected a table, got {show(values)}")
        for unknown in set(values) - set(registration.VARIABLES):
            raise t.fail(unknown, "unknown key")
        services.append(registration.service_from(name, values, source=t.source, key=t.key))
    ids = [s.service_id for s in services]
    for service in services:
        if ids.count(service.service_id) > 1:
            raise ConfigError(service.source, "", f"service id {show(service.service_id)} registered twice")
    return tuple(services)
