"""The value types every section shares: ports, addresses, signals, commands, accounts, and the typed
reads of a TOML value (`CONVERT`, `EXPECT`). Each parser raises ValueError with the message to show."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
from typing import Any, Callable, Dict, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from .errors import show


def split_host_port(text: str, default_port: Optional[int] = None) -> Tuple[str, int]:
    """'127.0.0.1:8089' -> ('127.0.0.1', 8089); '[::1]:80' -> ('::1', 80). Raises ValueError."""
    host, sep, port_text = text.rpartition(":")
    if not sep or (host.count(":") and not host.startswith("[")):
        if default_port is None:
            raise ValueError(f"expected host:port, got {show(text)}")
        host, port_text = text, str(default_port)
    host = host.strip("[]")
    if not host:
        raise ValueError(f"expected host:port, got {show(text)}")
    port = parse_port(port_text)
    return host, port


def parse_port(text: Any) -> int:
    if isinstance(text, bool):
        raise ValueError(f"expected a port 1-65535, got {show(text)}")
    try:
        port = int(text, 10) if isinstance(text, str) else int(text)
    except (TypeError, ValueError):
        raise ValueError(f"expected a port 1-65535, got {show(text)}") from None
    if not 1 <= port <= 65535 or (isinstance(text, float) and text != port):
        raise ValueError(f"expected a port 1-65535, got {show(text)}")
    return port


def check_bind(address: str) -> str:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"expected an IP address, got {show(address)}") from None
    return address


def http_target(url: str) -> Tuple[str, int, str]:
    """(address, port, path and query) of an http:// URL on an IP address or localhost. ValueError."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"expected an http:// URL, got {show(url)}")
    host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
    try:
        check_bind(host)  # an IP address: PID 1 resolves no names
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"expected an http:// URL on an IP address or localhost, got {show(url)}") from None
    path = parts.path or "/"
    return host, port, path + (f"?{parts.query}" if parts.query else "")


def signal_number(value: Any) -> int:
    """'TERM', 'SIGTERM', 15 -> 15. Raises ValueError."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return int(signal.Signals(value))
        except ValueError:
            raise ValueError(f"expected a signal name or number, got {show(value)}") from None
    if isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else "SIG" + name
        sig = getattr(signal.Signals, name, None)
        if sig is not None:
            return int(sig)
    raise ValueError(f"expected a signal name or number, got {show(value)}")


def resolve_command(argv0: str, path: Optional[str] = None) -> Optional[str]:
    """Full path of a command as execvp would find it, or None."""
    if "/" in argv0:
        return argv0 if os.access(argv0, os.X_OK) and os.path.isfile(argv0) else None
    return shutil.which(argv0, path=path)


def account_problem(kind: str, name: Optional[str]) -> Optional[str]:
    """Why `name` is no user (kind "user") or group here, or None (also for None)."""
    if name is None:
        return None
    import grp
    import pwd

    try:
        if kind == "user":
            pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        else:
            grp.getgrgid(int(name)) if name.isdigit() else grp.getgrnam(name)
    except KeyError:
        return f"no such {kind} {show(name)}"
    return None


# --- typed reads of TOML values: an empty ValueError means "say what was expected" (EXPECT) ---------


def seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError("")
    return float(value)


def count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("")
    return value


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("")
    return value


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("")
    return value


def text_list(value: Any) -> Tuple[str, ...]:
    if (
        isinstance(value, str)
        or not isinstance(value, (list, tuple))
        or not all(isinstance(v, str) for v in value)
    ):
        raise ValueError("")
    return tuple(value)


def signal_list(value: Any) -> Tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError("")
    numbers = tuple(signal_number(v) for v in value)
    for number in numbers:
        if number in (signal.SIGKILL, signal.SIGSTOP):  # a process cannot catch, so cannot forward, them
            raise ValueError(f"{signal.Signals(number).name} cannot be forwarded, got {show(value)}")
    return numbers


def environment(value: Any) -> Tuple[Tuple[str, str], ...]:
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError("")
    return tuple(sorted(value.items()))


CONVERT: Dict[str, Callable[[Any], Any]] = {
    "seconds": seconds,
    "count": count,
    "text": text,
    "flag": flag,
    "text_list": text_list,
    "signal": signal_number,
    "signal_list": signal_list,
    "environment": environment,
    "port": parse_port,
}
EXPECT = {
    "seconds": "a number of seconds",
    "count": "a whole number >= 0",
    "text": "a string",
    "flag": "true or false",
    "text_list": "a list of strings",
    "signal": "a signal name or number",
    "signal_list": "a list of signal names",
    "environment": "a table of strings",
    "port": "a port 1-65535",
}
