"""What basenode's children inherit of its environment: everything but its secrets.

basenode reads the Consul ACL token, the gossip key and the TLS client key from its environment.
A child that gets them (the application, a `[programs.*]` running as `nobody`, a template's check
command) can read them from /proc/self/environ and hand them to anyone. So they are removed from
every child's environment unless it names them in its `pass_env` list; basenode's own children
(the agent, the sync loop, register) keep them, as they talk to Consul with them.

Only the standard library: the supervisor (PID 1) imports this.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, Mapping

# Consul's own secret variables (as its CLI reads them) and every variable basenode reads a secret from.
SECRET_ENV = frozenset(
    {
        "CONSUL_HTTP_TOKEN",
        "CONSUL_HTTP_TOKEN_FILE",
        "CONSUL_HTTP_AUTH",
        "CONSUL_ENCRYPT",
        "CONSUL_CLIENT_KEY",
    }
)
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def inherited(environ: Mapping[str, str], pass_env: Iterable[str] = ()) -> Dict[str, str]:
    """`environ` without the secret variables, but those named in `pass_env`."""
    keep = set(pass_env)
    return {k: v for k, v in environ.items() if k not in SECRET_ENV or k in keep}


def check_names(names: Iterable[str]) -> None:
    """ValueError naming the first entry of a pass_env (or allow) list that is no variable name."""
    for name in names:
        if not ENV_NAME_RE.match(name):
            raise ValueError(f"expected variable names, got {name[:64]!r}")
