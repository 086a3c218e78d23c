"""Per-route HAProxy options: a fixed set of known options, each validated into a value of its type.

A route may tune its frontend, backend and servers without a template of its own:

  balance          roundrobin | leastconn | first | random (the algorithms `add server` works with)
  timeout_connect  durations (`500ms`, `5s`, `1m30s`; in the file also a number of seconds),
  timeout_server     1ms to 24h
  timeout_client
  maxconn          connections per server at most, 1-1000000
  retries          connection retries, 0-100
  check            HAProxy's own active check: `tcp` (connect) or an HTTP path (`/health`: GET, 2xx/3xx)
  check_interval   its interval (`inter`), 100ms-1h; needs check
  observe          HAProxy's passive check: layer4 (connection errors) or layer7 (http routes: 5xx too);
                   after error_limit consecutive errors the server is marked down at once
                   (`on-error mark-down`), and its active check brings it back: observe without check
                   turns on check = "tcp"
  error_limit      consecutive errors before that, 1-1000 (HAProxy's default 10); needs observe
  cookie           sticky sessions (http routes): the cookie's name, [A-Za-z0-9_-]{1,64}
  send_proxy       true | v1 | v2: the PROXY protocol header to the server
  ssl              true: TLS to the server
  verify           required (default) | none; required needs ca_file
  ca_file          the CA bundle to verify the server with: an absolute path to an existing file
  sni              the TLS server name to send (and to verify), a DNS host name

Every value is checked here; a template prints only these normalised values (never the text a user
wrote), so no option can add a word or a line the template did not write. Values come as TOML values
(the config file) or as text (flags, environment, Consul KV).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from .durations import parse_duration
from .tokens import HOSTNAME_RE

BALANCE = ("roundrobin", "leastconn", "first", "random")
OBSERVE = ("layer4", "layer7")
VERIFY = ("required", "none")
# A path HAProxy reads as one word: no whitespace, quote, backslash, `#` (comment) or `$` (variable),
# and no `,` or `;`, which separate routes and options in --routes.
CHECK_PATH_RE = re.compile(r"^/[A-Za-z0-9._~/%+=&?:@!*-]{0,255}\Z")
COOKIE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
CA_FILE_RE = re.compile(r"^/[A-Za-z0-9._/+@-]{1,1023}\Z")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class OptionError(ValueError):
    """A bad option: str() is `name=value: why` (the caller adds the route and where it came from)."""

    def __init__(self, option: str, value: Any, message: str) -> None:
        self.option = option
        self.value = value
        self.message = message
        super().__init__(f"option {option}={show(value)}: {message}")


def show(value: Any) -> str:
    """The value as TOML/JSON writes it, control characters escaped: the message stays one line."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class RouteOptions:
    """A route's options, normalised; None (or False) is "not set": the template's default applies."""

    balance: Optional[str] = None
    timeout_connect: Optional[str] = None  # an HAProxy duration: "1500ms", "5s", "2m", "1h"
    timeout_server: Optional[str] = None
    timeout_client: Optional[str] = None
    maxconn: Optional[int] = None
    retries: Optional[int] = None
    check: Optional[str] = None  # "tcp" or an HTTP path
    check_interval: Optional[str] = None
    observe: Optional[str] = None  # "layer4" | "layer7"
    error_limit: Optional[int] = None
    cookie: Optional[str] = None
    send_proxy: Optional[str] = None  # "v1" | "v2"
    ssl: bool = False
    verify: Optional[str] = None  # "required" | "none" when ssl
    ca_file: Optional[str] = None
    sni: Optional[str] = None

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


NAMES = tuple(f.name for f in fields(RouteOptions))


# --- one converter per kind of value ---------------------------------------------------------------


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value.strip()


def _choice(choices: Sequence[str]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if _text(value) not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return _text(value)

    return convert


def _integer(low: int, high: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(r"[0-9]{1,9}", value.strip()):
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected a whole number {low}-{high}")
        return value

    return convert


def _duration(low_ms: int, high_ms: int) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)  # the config file's unit, as for every other duration there
        else:
            try:
                seconds = parse_duration(_text(value))
            except ValueError:
                seconds = -1.0
        ms = round(seconds * 1000) if 0 < seconds < 1e9 else -1
        if not low_ms <= ms <= high_ms:
            low, high = format_ms(low_ms), format_ms(high_ms)
            raise ValueError(f"expected a duration {low} to {high}, like 5s or 500ms")
        return format_ms(ms)

    return convert


def format_ms(ms: int) -> str:
    """Milliseconds as HAProxy reads them, in the largest exact unit: 90000 -> "90s", 120000 -> "2m"."""
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("expected true or false")


def _check(value: Any) -> str:
    text = _text(value)
    if text != "tcp" and not CHECK_PATH_RE.match(text):
        raise ValueError("expected tcp or an HTTP path such as /health (letters, digits and ._~/%+=&?:@!*-)")
    return text


def _send_proxy(value: Any) -> Optional[str]:
    if isinstance(value, str) and value.strip() in ("v1", "v2"):
        return value.strip()
    try:
        return "v1" if _flag(value) else None
    except ValueError:
        raise ValueError("expected true, false, v1 or v2") from None


def _pattern(regex: re.Pattern[str], what: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if not regex.match(_text(value)):
            raise ValueError(f"expected {what}")
        return _text(value)

    return convert


def _ca_file(value: Any) -> str:
    """A file HAProxy can load: any other would fail the whole config's check, every route's."""
    path = _pattern(CA_FILE_RE, "an absolute path of letters, digits and ._/+@-")(value)
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
    except OSError:
        raise ValueError("no such readable file on this node") from None
    if b"-----BEGIN CERTIFICATE-----" not in head:
        raise ValueError("not a PEM file of CA certificates")
    return path


CONVERT: Dict[str, Callable[[Any], Any]] = {
    "balance": _choice(BALANCE),
    "timeout_connect": _duration(1, 86_400_000),
    "timeout_server": _duration(1, 86_400_000),
    "timeout_client": _duration(1, 86_400_000),
    "maxconn": _integer(1, 1_000_000),
    "retries": _integer(0, 100),
    "check": _check,
    "check_interval": _duration(100, 3_600_000),
    "observe": _choice(OBSERVE),
    "error_limit": _integer(1, 1000),
    "cookie": _pattern(COOKIE_RE, "a cookie name of 1-64 letters, digits, _ and -"),
    "send_proxy": _send_proxy,
    "ssl": _flag,
    "verify": _choice(VERIFY),
    "ca_file": _ca_file,
    "sni": _pattern(HOSTNAME_RE, "a DNS host name"),
}


# --- a route's options ------------------------------------------------------------------------------


def parse_options(values: Mapping[str, Any], mode: str) -> RouteOptions:
    """{name: TOML value or text} -> RouteOptions for a route of `mode`. OptionError on the first bad one."""
    parsed: Dict[str, Any] = {}
    for name, value in values.items():
        convert = CONVERT.get(name)
        if convert is None:
            raise OptionError(name, value, f"unknown option (known: tag, dc, failover, {', '.join(NAMES)})")
        try:
            parsed[name] = convert(value)
        except ValueError as e:
            raise OptionError(name, value, str(e)) from None
    _check_together(parsed, values, mode)
    if parsed.get("observe") and not parsed.get("check"):
        parsed["check"] = "tcp"  # what brings a server marked down by observe back up
    if parsed.get("ssl") and not parsed.get("verify"):
        parsed["verify"] = "required"
    return RouteOptions(**parsed)


def _check_together(parsed: Mapping[str, Any], raw: Mapping[str, Any], mode: str) -> None:
    def needs(name: str, condition: bool, what: str) -> None:
        if name in parsed and parsed[name] is not None and not condition:
            raise OptionError(name, raw[name], f"needs {what}")

    needs("cookie", mode == "http", "mode http (a tcp route has no cookies)")
    needs("observe", mode == "http" or parsed.get("observe") != "layer7", "mode http (or observe = layer4)")
    needs("check_interval", bool(parsed.get("check") or parsed.get("observe")), "check (or observe)")
    needs("error_limit", bool(parsed.get("observe")), "observe")
    for name in ("verify", "ca_file", "sni"):
        needs(name, bool(parsed.get("ssl")), "ssl = true")
    if parsed.get("ssl") and parsed.get("verify", "required") == "required" and not parsed.get("ca_file"):
        raise OptionError(
            "ssl", raw["ssl"], "verify required (the default) needs ca_file, or set verify = none"
        )


def split_words(words: Sequence[str]) -> Dict[str, str]:
    """`["balance=leastconn", "check=/health"]` -> {name: text}; OptionError on a word without `=` or
    an option given twice."""
    pairs: Dict[str, str] = {}
    for word in words:
        name, sep, value = word.partition("=")
        if not sep or not value:
            raise OptionError(name, value, "expected NAME=VALUE")
        if name in pairs:
            raise OptionError(name, value, "given twice")
        pairs[name] = value
    return pairs
