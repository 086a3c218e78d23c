"""Route options from Consul KV, whatever a cluster puts there.

A KV value reaches every node, so its options are hostile input: any text at all after `PORT/MODE`.
Two properties, checked against shapes written here from the documented options (README "Route
options", basenode/route_options.py's docstring), not from the template:

1. Whatever the value, the config has only lines the template writes: the lines of the same route
   without options, or an option's line with a value of that option's class (a choice, a duration,
   a number, a path of safe characters...), and server lines that are the plain line plus option
   words in their documented order. `haproxy -c` accepts the config.
2. A bad value never stops another route: the other route is routed with its own options and renders
   exactly as it does alone; the bad key is skipped with a warning naming it.
"""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import event, given, settings
from hypothesis import strategies as st

from basenode.config import Route, Settings
from basenode.output import haproxy
from basenode.route_options import NAMES
from basenode.routes import merge_kv_routes, parse_kv_route
from basenode.snapshot import Instance, RouteState, Snapshot
from basenode.template import render
from tests.conftest import require_binary

TEMPLATE = render.load_template(render.default_template(), single_line=True)
P = "basenode/routes/"
CA = "/etc/ssl/certs/ca-certificates.crt"
INSTANCES = (Instance("a", "n1", "10.0.0.1", 8080), Instance("b", "n2", "10.0.0.2", 8080))
SETTINGS = Settings(state_dir=Path("/run/basenode"))

# Values a user could mean, per option; near misses and any text at all come from NEAR and st.text().
VALID = {
    "balance": ["roundrobin", "leastconn", "first", "random"],
    "timeout_connect": ["5s", "500ms", "1m30s", "24h", "1.5s"],
    "timeout_server": ["30s", "1h", "1ms"],
    "timeout_client": ["1m", "10s", "90m"],
    "maxconn": ["1", "100", "1000000"],
    "retries": ["0", "3", "100"],
    "check": ["tcp", "/health", "/a?b=c&d=e", "/", "/~x/%41:@!*+"],
    "check_interval": ["2s", "100ms", "1h"],
    "observe": ["layer4", "layer7"],
    "error_limit": ["1", "10", "1000"],
    "cookie": ["SRV", "BN_srv-1", "x" * 64],
    "send_proxy": ["true", "false", "v1", "v2", "yes", "off"],
    "ssl": ["true", "false", "on", "1"],
    "verify": ["required", "none"],
    "ca_file": [CA],
    "sni": ["web.example", "db", "a-b.c-d.example"],
    "tag": ["v1", "a:b"],
}
NEAR = {
    "balance": ["static-rr", "source", "Leastconn", "roundrobin\n"],
    "timeout_connect": ["25h", "0s", "5", "2x", "-1s", "9999999999h", "0.4ms"],
    "maxconn": ["1000001", "0", "-5", "1e3", "\u0661\u0662"],
    "retries": ["101", "x"],
    "check": ["health", "/a#b", "/a;b", "/${X}", "http", "/a'b", "/a\\b"],
    "check_interval": ["99ms", "2h"],
    "observe": ["layer3"],
    "error_limit": ["1001", "0"],
    "cookie": ["a.b", "a=b", "x" * 65, "$x"],
    "send_proxy": ["v3"],
    "ssl": ["maybe"],
    "verify": ["optional"],
    "ca_file": ["/etc/hostname", "/no/such.pem", "relative.pem", "/etc/ssl/certs", CA + " x"],
    "sni": ["-bad", "a..b", "x" * 64, "web.example.", "a_b"],
}
NEEDS = {"check_interval": "check", "error_limit": "observe", "verify": "ssl", "ca_file": "ssl", "sni": "ssl"}


@st.composite
def kv_values(draw) -> str:
    """`9400[/MODE]` and option words a user could mean (with what they need), and in half the examples
    one word made hostile: a near miss or any text at all as its value, any name, odd separators."""
    mode = draw(st.sampled_from(["", "/tcp", "/http", "/http"]))
    chosen = draw(st.lists(st.sampled_from([*NAMES, "tag"]), unique=True, max_size=7))
    chosen += [NEEDS[n] for n in chosen if n in NEEDS and NEEDS[n] not in chosen]
    if "ssl" in chosen and "ca_file" not in chosen:
        chosen.append("verify")  # = none below: verify required needs a ca_file
    pairs = {name: draw(st.sampled_from(VALID[name])) for name in chosen}
    if "verify" in pairs and "ca_file" not in pairs:
        pairs["verify"] = "none"
    words = [f" {name}={value}" for name, value in pairs.items()]
    if draw(st.booleans()):
        name = draw(st.sampled_from([*NAMES, "tag", "colour", "Balance", ""]))
        value = draw(st.one_of(st.sampled_from(NEAR.get(name, ["x"])), st.text(max_size=12)))
        separator = draw(st.sampled_from([" ", "\t", "\n", " \r\n "]))
        equals = draw(st.sampled_from(["=", "", "=="]))
        words.insert(draw(st.integers(0, len(words))), separator + name + equals + value)
    return f"9400{mode}" + "".join(words)


# --- shapes of the lines an option may add or change --------------------------------------------

DURATION = r"\d{1,8}(?:ms|s|m|h)"
HOST = r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"
PATH = r"/[A-Za-z0-9._~/%+=&?:@!*-]{0,255}"
CA_PATH = re.escape(CA)
OPTION_LINES = [
    r"    balance (?:roundrobin|leastconn|first|random)",
    rf"    timeout (?:connect|server|client) {DURATION}",
    r"    retries \d{1,3}",
    rf"    option httpchk GET {PATH}",
    r"    cookie [A-Za-z0-9_-]{1,64} insert indirect nocache dynamic",
    r"    dynamic-cookie-key svc",
    r"    # Loaded here so that a server added through the runtime API can use it"
    r" \(it cannot load a new file\)\.",
    rf"    default-server ca-file {CA_PATH}",
]
SERVER_LINE = (
    r"    server n[12]_[ab] 10\.0\.0\.[12]:8080 weight 1"
    r"(?: maxconn \d{1,7})?(?: check)?(?: inter " + DURATION + r")?"
    r"(?: observe layer[47] on-error mark-down)?(?: error-limit \d{1,4})?"
    r"(?: send-proxy(?:-v2)?)?(?: check-send-proxy)?"
    r"(?: ssl verify (?:required|none))?(?: ca-file " + CA_PATH + r")?"
    r"(?: sni str\(" + HOST + r"\)(?: check-sni " + HOST + r")?)?"
)
ALLOWED = re.compile("|".join([*OPTION_LINES, SERVER_LINE]))


def config_of(*routes: Route) -> str:
    snapshot = Snapshot(tuple(RouteState(r, INSTANCES) for r in sorted(routes, key=lambda r: r.service)))
    return render.render_context(TEMPLATE, render.context(snapshot, SETTINGS))


@settings(max_examples=300)
@given(value=kv_values())
def test_any_kv_options_give_only_template_lines_and_a_config_haproxy_accepts(value, tmp_path_factory):
    merged = merge_kv_routes((), {P + "svc": value})
    event("refused" if not merged.routes else "routed")
    if not merged.routes:  # refused: one warning naming the key, and its reason in bad_values
        assert len(merged.warnings) == 1 and P + "svc" in merged.warnings[0]
        assert "\n" not in merged.warnings[0]  # one line, whatever the value holds
        assert list(merged.bad_values) == [P + "svc"]
        return
    (route,) = merged.routes
    text = config_of(route)
    plain = set(config_of(Route("svc", route.port, route.mode)).splitlines())
    lines = text.splitlines()
    for line in lines:
        assert line in plain or ALLOWED.fullmatch(line), f"{line!r} is no template line (value {value!r})"
    headers = [line for line in lines if line and not line[0].isspace()]
    assert headers == [line for line in config_of(Route("svc", route.port, route.mode)).splitlines()
                       if line and not line[0].isspace()]  # fmt: skip
    assert sum(line.startswith("    server ") for line in lines) == len(INSTANCES)
    config = tmp_path_factory.mktemp("cfg") / "candidate.cfg"
    config.write_text(text)
    haproxy.check(require_binary("haproxy"), config)


GOOD = "9302/http balance=leastconn check=/health observe=layer7 cookie=S timeout_server=5s"


@given(value=kv_values(), key=st.sampled_from(["aaa", "web0", "zzz"]))
def test_a_bad_kv_value_never_stops_another_route(value, key):
    merged = merge_kv_routes((), {P + "web": GOOD, P + key: value})
    good = parse_kv_route(P + "web", GOOD)
    assert good in merged.routes
    others = [r for r in merged.routes if r.service != "web"]
    if not others:
        assert P + key in merged.bad_values and any(P + key in w for w in merged.warnings)
    alone = config_of(good)
    part = alone[alone.index("frontend web") :]
    assert part in config_of(*merged.routes)  # the good route renders exactly as it does alone
