"""Values that may stand unquoted in a config file, as one word."""

from __future__ import annotations

import re

# A token that may stand in a config file unquoted: no whitespace, no control characters,
# nothing HAProxy or nginx treat as syntax (# ; " ' ` \ { }). The patterns end in \Z, not $: `$` also
# matches before a final newline, which would then reach the config file.
SAFE_TOKEN_RE = re.compile(r"^[A-Za-z0-9._:/@%+=,~-]{1,256}\Z")
# RFC 1123 host names, as a node address (or a TLS server name) may be one.
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z"
)
