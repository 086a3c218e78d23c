"""Per-route HAProxy options: each one, from the file, a KV value or --routes, changes the rendered
config as documented, and the config passes the real `haproxy -c`; a bad one is one line naming the
route, the option, the value and where it came from."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from basenode import config
from basenode.config import ConfigError, Route, Settings
from basenode.route_options import RouteOptions, format_ms, parse_options
from basenode.routes import merge_kv_routes, parse_kv_route
from basenode.snapshot import Instance, RouteState, Snapshot
from basenode.template import render
from tests.conftest import require_binary

CA = "/etc/ssl/certs/ca-certificates.crt"
P = "basenode/routes/"
TEMPLATE = render.load_template(render.default_template(), single_line=True)
INSTANCES = (Instance("a", "n1", "10.0.0.1", 8080), Instance("b", "n2", "10.0.0.2", 8080))


def rendered(route: Route, tmp_path: Path) -> str:
    snap = Snapshot((RouteState(route, INSTANCES),))
    return render.render_context(TEMPLATE, render.context(snap, Settings(state_dir=tmp_path)))


def haproxy_accepts(text: str, tmp_path: Path) -> None:
    cfg = tmp_path / "candidate.cfg"
    cfg.write_text(text)
    proc = subprocess.run(
        [require_binary("haproxy"), "-c", "-f", str(cfg)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr + text


def section(text: str, name: str) -> list:
    lines = text.splitlines()
    start = lines.index(name)
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start + 1 : end]


SERVER = "    server n1_a 10.0.0.1:8080 weight 1"
# (mode, KV option words, lines the backend must hold, lines the frontend must hold)
CASES = [
    ("tcp", "balance=first", ["    balance first"], []),
    ("http", "balance=leastconn", ["    balance leastconn"], []),
    ("http", "balance=random", ["    balance random"], []),
    ("tcp", "timeout_connect=1500ms", ["    timeout connect 1500ms"], []),
    ("tcp", "timeout_server=90s", ["    timeout server 90s"], []),
    ("http", "timeout_server=2m", ["    timeout server 2m"], []),
    ("tcp", "timeout_client=1m30s", [], ["    timeout client 90s"]),
    ("http", "timeout_client=3h", [], ["    timeout client 3h"]),
    ("tcp", "maxconn=50", [SERVER + " maxconn 50"], []),
    ("tcp", "retries=0", ["    retries 0"], []),
    ("tcp", "check=tcp", [SERVER + " check"], []),
    ("http", "check=/health?full=1", ["    option httpchk GET /health?full=1", SERVER + " check"], []),
    ("tcp", "check=tcp check_interval=500ms", [SERVER + " check inter 500ms"], []),
    ("tcp", "observe=layer4", [SERVER + " check observe layer4 on-error mark-down"], []),
    (
        "http",
        "observe=layer7 error_limit=2 check=/ping",
        ["    option httpchk GET /ping", SERVER + " check observe layer7 on-error mark-down error-limit 2"],
        [],
    ),
    (
        "http",
        "cookie=SRV",
        ["    cookie SRV insert indirect nocache dynamic", "    dynamic-cookie-key web", SERVER],
        [],
    ),
    ("tcp", "send_proxy=true", [SERVER + " send-proxy"], []),
    ("tcp", "send_proxy=v2", [SERVER + " send-proxy-v2"], []),
    ("tcp", "send_proxy=v1 check=tcp", [SERVER + " check send-proxy check-send-proxy"], []),
    ("tcp", "ssl=true verify=none", [SERVER + " ssl verify none"], []),
    (
        "tcp",
        f"ssl=on ca_file={CA} sni=db.example check=tcp",
        [
            f"    default-server ca-file {CA}",
            SERVER + f" check ssl verify required ca-file {CA} sni str(db.example) check-sni db.example",
        ],
        [],
    ),
]


@pytest.mark.parametrize(("mode", "words", "backend", "frontend"), CASES, ids=[c[1] for c in CASES])
def test_each_option_from_kv_renders_its_documented_line_and_haproxy_accepts_it(
    mode, words, backend, frontend, tmp_path
):
    route = parse_kv_route(P + "web", f"9302/{mode} {words}")
    text = rendered(route, tmp_path)
    haproxy_accepts(text, tmp_path)
    for line in backend:
        assert line in section(text, "backend web"), (line, text)
    for line in frontend:
        assert line in section(text, "frontend web"), (line, text)
    plain = rendered(Route("web", 9302, mode), tmp_path)
    assert text != plain  # the option changed the config


def test_with_no_option_the_template_keeps_its_defaults(tmp_path):
    http = rendered(Route("web", 9302, "http"), tmp_path)
    assert "    balance roundrobin" in section(http, "backend web")
    assert "    timeout server 1m" in section(http, "backend web")
    assert "    timeout client 1m" in section(http, "frontend web")
    assert SERVER in section(http, "backend web")
    tcp = rendered(Route("web", 9302, "tcp"), tmp_path)
    assert "    balance leastconn" in section(tcp, "backend web")
    assert not any("timeout" in line or "check" in line for line in section(tcp, "backend web"))


def test_the_same_options_from_the_file_the_flag_and_kv_give_the_same_route(tmp_path):
    from tests.unit.test_config import load_file

    text = (
        '[routes.web]\nport = 9302\nmode = "http"\ntag = "v2"\nbalance = "leastconn"\ncheck = "/health"\n'
        'timeout_server = 30\nmaxconn = 100\nssl = true\nverify = "none"\nsend_proxy = "v2"\n'
    )
    (from_file,) = load_file(tmp_path, text).routes
    flag = (
        "web:9302/http;tag=v2;balance=leastconn;check=/health;timeout_server=30s;maxconn=100;ssl=true;"
        "verify=none;send_proxy=v2"
    )
    (from_flag,) = config.load(config.Flags(no_consul=True, no_haproxy=True, routes=flag), {}).routes
    from_kv = parse_kv_route(
        P + "web",
        "9302/http tag=v2 balance=leastconn check=/health timeout_server=30s maxconn=100 ssl=true"
        " verify=none send_proxy=v2",
    )
    assert from_file.options == from_flag.options == from_kv.options
    assert from_file.tag == from_flag.tag == from_kv.tag == "v2"
    assert from_kv.options == RouteOptions(
        balance="leastconn",
        check="/health",
        timeout_server="30s",
        maxconn=100,
        ssl=True,
        verify="none",
        send_proxy="v2",
    )


def test_a_flag_lists_routes_with_commas_and_options_with_semicolons():
    routes = config.parse_routes("db:9301;retries=1,web:9302/http;balance=first; cookie=S ", "--routes")
    assert [(r.service, r.options.retries, r.options.balance, r.options.cookie) for r in routes] == [
        ("db", 1, None, None),
        ("web", None, "first", "S"),
    ]


@pytest.mark.parametrize(
    ("value", "option", "shown"),
    [
        ("9302 balance=fastest", "balance", '"fastest"'),
        ("9302 balance=static-rr", "balance", '"static-rr"'),
        ("9302 timeout_server=5", "timeout_server", '"5"'),
        ("9302 timeout_server=25h", "timeout_server", '"25h"'),
        ("9302 maxconn=0", "maxconn", '"0"'),
        ("9302 maxconn=-1", "maxconn", '"-1"'),
        ("9302 retries=101", "retries", '"101"'),
        ("9302 check=http", "check", '"http"'),
        ("9302 check=/a#b", "check", '"/a#b"'),
        ('9302 check=/a"b', "check", r'"/a\"b"'),
        ("9302 observe=layer7", "observe", '"layer7"'),  # needs http
        ("9302/http cookie=a;b", "cookie", '"a;b"'),
        ("9302 cookie=SRV", "cookie", '"SRV"'),  # needs http
        ("9302 error_limit=3", "error_limit", '"3"'),  # needs observe
        ("9302 check_interval=2s", "check_interval", '"2s"'),  # needs check
        ("9302 send_proxy=v3", "send_proxy", '"v3"'),
        ("9302 ssl=true", "ssl", '"true"'),  # verify required needs ca_file
        ("9302 sni=db.example", "sni", '"db.example"'),  # needs ssl
        ("9302 ssl=true verify=none sni=-bad-", "sni", '"-bad-"'),
        ("9302 ssl=true ca_file=/no/such/file", "ca_file", '"/no/such/file"'),
        ("9302 ssl=true ca_file=relative.pem", "ca_file", '"relative.pem"'),
        ("9302 colour=red", "colour", '"red"'),
        ("9302 balance=first balance=random", "balance", '"random"'),
        ("9302 balance", "balance", '""'),
    ],
)
def test_a_bad_kv_option_is_one_line_naming_the_route_the_option_the_value_and_the_key(value, option, shown):
    with pytest.raises(ConfigError) as e:
        parse_kv_route(P + "web", value)
    message = str(e.value)
    assert "\n" not in message
    assert f"{P}web" in message and "route web" in message
    assert f"option {option}={shown}" in message, message


def test_a_bad_option_in_the_flag_the_variable_or_the_file_names_it_and_its_source(tmp_path):
    from tests.unit.test_config import load_file

    with pytest.raises(ConfigError) as e:
        config.load(config.Flags(no_consul=True, no_haproxy=True, routes="web:9302;retries=many"), {})
    assert str(e.value).startswith("--routes: route ") and 'option retries="many"' in str(e.value)
    with pytest.raises(ConfigError) as e:
        config.load(config.Flags(no_consul=True, no_haproxy=True), {"BASENODE_ROUTES": "web:9302;balance=x"})
    assert str(e.value).startswith("BASENODE_ROUTES: route ") and 'option balance="x"' in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_file(tmp_path, '[routes.web]\nport = 9302\nbalance = "x"\n')
    assert str(e.value).startswith(f"{tmp_path}/basenode.toml:3: routes.web.balance: route web: ")
    with pytest.raises(ConfigError) as e:
        load_file(tmp_path, "[routes.web]\nport = 9302\nmaxconn = true\n")
    assert "routes.web.maxconn" in str(e.value) and "option maxconn=true" in str(e.value)


def test_a_bad_kv_option_skips_its_route_only_and_is_reported_by_key():
    merged = merge_kv_routes((), {P + "web": "9302/http balance=leastconn", P + "db": "9301 balance=nope"})
    assert [(r.service, r.options.balance) for r in merged.routes] == [("web", "leastconn")]
    assert list(merged.bad_values) == [P + "db"]
    assert 'option balance="nope"' in merged.bad_values[P + "db"]
    assert len(merged.warnings) == 1 and P + "db" in merged.warnings[0]


def test_observe_without_check_turns_on_a_tcp_check_and_ssl_defaults_to_verify_required():
    assert parse_options({"observe": "layer4"}, "tcp").check == "tcp"
    assert parse_options({"observe": "layer7", "check": "/h"}, "http").check == "/h"
    assert parse_options({"ssl": True, "ca_file": CA}, "tcp").verify == "required"


@pytest.mark.parametrize(
    ("ms", "text"),
    [(1, "1ms"), (1500, "1500ms"), (2000, "2s"), (90000, "90s"), (120000, "2m"), (7200000, "2h")],
)
def test_durations_are_printed_in_the_largest_exact_unit(ms, text):
    assert format_ms(ms) == text


def test_a_route_whose_options_changed_is_rendered_again():
    settings = Settings(state_dir=Path("/run/basenode"))
    plain = RouteState(Route("web", 9302, "http"), INSTANCES)
    parts = render.RouteParts()
    render.render_context(TEMPLATE, render.context(Snapshot((plain,)), settings, parts))
    tuned = RouteState(Route("web", 9302, "http", options=RouteOptions(balance="first")), INSTANCES)
    text = render.render_context(TEMPLATE, render.context(Snapshot((tuned,)), settings, parts))
    assert parts.renders == 2 and "    balance first" in text
