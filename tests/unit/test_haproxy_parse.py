"""Reading a rendered config: which changes the runtime API can make, and which need a reload."""

from __future__ import annotations

from basenode.output.haproxy import parse_config
from basenode.output.haproxy.program import alerts as _alerts

BASE = """global
    stats socket /run/basenode/haproxy.sock mode 600 level admin

frontend web
    bind 127.0.0.1:9302
    default_backend web

backend web  # the web service
    balance roundrobin
{servers}
listen db
    bind 127.0.0.1:9301
    server n1_db-1 10.0.0.9:5432 weight 1
"""


def config(*servers: str) -> str:
    return BASE.format(servers="".join(f"    {s}\n" for s in servers))


def test_server_lines_are_not_part_of_the_structure():
    one = parse_config(config("server n1_a 10.0.0.5:8080 weight 1"))
    two = parse_config(config("server n1_a 10.0.0.6:8081 weight 3", "server n1_b [fd00::5]:80 weight 1"))
    assert one.skeleton == two.skeleton
    assert one.backends == two.backends == ("web", "db")
    a = two.servers["web"]["n1_a"]
    assert (a.address, a.port, a.weight, a.options) == ("10.0.0.6", 8081, 3, ())
    b = two.servers["web"]["n1_b"]
    assert (b.address, b.port, b.args) == ("fd00::5", 80, ("[fd00::5]:80", "weight", "1"))
    assert list(two.servers["db"]) == ["n1_db-1"]


def test_anything_but_server_lines_is_structure():
    plain = parse_config(config("server n1_a 10.0.0.5:8080"))
    assert parse_config(config("server n1_a 10.0.0.5:8080").replace("roundrobin", "leastconn")).skeleton != (
        plain.skeleton
    )
    assert (
        parse_config(config("server n1_a 10.0.0.5:8080").replace("9302", "9303")).skeleton != plain.skeleton
    )
    assert parse_config(config("server-template s 3 10.0.0.5:8080")).skeleton != plain.skeleton


def test_comments_do_not_count_as_structure():
    plain = parse_config(config("server n1_a 10.0.0.5:8080"))
    commented = parse_config(config("server n1_a 10.0.0.5:8080  # instance a").replace("# the web", "# web"))
    assert commented.skeleton == plain.skeleton
    assert commented.servers == plain.servers


def test_host_names_options_and_odd_lines_are_left_to_a_reload():
    parsed = parse_config(
        config(
            "server n1_h db.example.internal:8080 weight 1 init-addr last,libc,none",
            "server n1_d 10.0.0.5:8080 disabled",
            "server n1_c 10.0.0.5:8081 check inter 2s",
        )
    )
    servers = parsed.servers["web"]
    assert not servers["n1_h"].runtime_ok
    assert not servers["n1_d"].runtime_ok
    assert servers["n1_c"].runtime_ok and servers["n1_c"].options == ("check", "inter", "2s")
    quoted = parse_config(config('server n1_q "10.0.0.5:8080"'))
    assert "n1_q" not in quoted.servers["web"]  # quoting: part of the structure, so any change reloads


def test_haproxy_alerts_are_reported_without_pid_noise():
    output = (
        "[NOTICE]   (12) : haproxy version is 2.6.12\n"
        "[ALERT]    (12) : config : parsing [/run/basenode/haproxy.cfg.new:33] : unknown keyword 'bogus'\n"
        "[ALERT]    (12) : config : Fatal errors found in configuration.\n"
    )
    assert _alerts(output) == (
        "config : parsing [/run/basenode/haproxy.cfg.new:33] : unknown keyword 'bogus' | "
        "config : Fatal errors found in configuration."
    )


def test_basenode_validates_a_server_line_itself_before_the_runtime_api_gets_it():
    """What a server change needs instead of `haproxy -c`: an IP address and port, a weight of 0-256,
    and only options `add server` takes, each with a value of the right form."""
    servers = parse_config(
        config(
            "server ok1 10.0.0.5:8080 weight 256 maxconn 100 inter 2s rise 2 fall 3 check backup",
            "server ok2 [fd00::5]:80 weight 0 on-error mark-down observe layer7 slowstart 10s",
            "server heavy 10.0.0.5:8081 weight 257",
            "server wordy 10.0.0.5:8082 weight many",
            "server odd 10.0.0.5:8083 weight 1 cookie abc",
            "server lots 10.0.0.5:8084 weight 1 maxconn lots",
            "server late 10.0.0.5:8085 weight 1 inter soon",
            "server short 10.0.0.5:8086 weight 1 maxconn",
            "server bad! 10.0.0.5:8087 weight 1",
            "server port0 10.0.0.5:0 weight 1",
        )
    ).servers["web"]
    assert servers["ok1"].runtime_ok and servers["ok1"].weight == 256
    assert servers["ok2"].runtime_ok and servers["ok2"].weight == 0
    problems = {name: line.problem for name, line in servers.items() if not line.runtime_ok}
    assert sorted(problems) == ["bad!", "heavy", "late", "lots", "odd", "port0", "short", "wordy"]
    assert "weight '257'" in problems["heavy"] and "weight 'many'" in problems["wordy"]
    assert "option 'cookie'" in problems["odd"]
    assert "maxconn 'lots'" in problems["lots"] and "inter 'soon'" in problems["late"]
    assert "maxconn ''" in problems["short"]
    assert "bad!" in problems["bad!"]
    assert "10.0.0.5:0" in problems["port0"]


def test_a_server_line_with_admin_socket_syntax_never_takes_the_runtime_path():
    servers = parse_config(
        config(
            "server n1_a 10.0.0.5:8080 weight 1 maxconn 5;shutdown",
            "server n1_b 10.0.0.6:8080 id\x01 weight 1",
        )
    ).servers["web"]
    assert "';'" in servers["n1_a"].problem
    assert "control character 0x01" in servers["n1_b"].problem


def test_a_server_line_with_every_route_option_can_be_added_at_runtime():
    line = (
        "server n1_a 10.0.0.5:8080 weight 1 maxconn 50 check inter 2s observe layer7 on-error mark-down"
        " error-limit 3 send-proxy-v2 ssl verify required ca-file /etc/ssl/certs/ca.pem sni str(web.example)"
        " check-sni web.example"
    )
    server = parse_config(config(line)).servers["web"]["n1_a"]
    assert server.runtime_ok and server.weight == 1 and server.address == "10.0.0.5"
    assert server.args == tuple(line.split()[2:])


def test_backends_with_dynamic_cookies_are_known():
    text = config("server n1_a 10.0.0.5:8080 weight 1").replace(
        "    balance roundrobin\n", "    balance roundrobin\n    cookie SRV insert indirect nocache dynamic\n"
    )
    assert parse_config(text).dynamic_cookies == frozenset({"web"})
    assert parse_config(config()).dynamic_cookies == frozenset()


def test_digits_that_are_not_ascii_make_a_line_for_the_check_not_an_error():
    for line in ("server n1_a 10.0.0.5:8080 weight \u00b2", "server n1_a 10.0.0.5:\u0663 weight 1"):
        server = parse_config(config(line)).servers["web"]["n1_a"]
        assert not server.runtime_ok  # left to haproxy -c and a reload
