"""Render: sandboxed, strict, documented; the default template is a config HAProxy accepts."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Dict, Set

import pytest

from basenode import route_options
from basenode.config import ConsulHTTP, Route, Settings
from basenode.snapshot import Instance, RouteState, Snapshot
from basenode.template import render
from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parent.parent.parent


def snapshot() -> Snapshot:
    return Snapshot(
        (
            RouteState(Route("db", 9301), ()),
            RouteState(
                Route("web", 9302, "http"),
                (
                    Instance("web-1", "node1", "10.0.0.5", 8080, tags=("v1",), meta=(("zone", "a"),)),
                    Instance("web-2", "node2", "fd00::5", 8080, weight=5),
                    Instance("web-3", "node3", "web3.example.internal", 8080),
                ),
            ),
        )
    )


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def haproxy_check(text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    cfg = write(tmp_path, "candidate.cfg", text)
    return subprocess.run(
        [require_binary("haproxy"), "-c", "-f", str(cfg)], capture_output=True, text=True, check=False
    )


def test_the_default_template_is_the_repositorys_in_a_checkout():
    assert render.default_template() == ROOT / "templates" / "haproxy.cfg.j2"


def test_the_default_template_renders_a_config_haproxy_accepts(tmp_path):
    text = render.render(
        render.load_template(render.default_template()), snapshot(), Settings(state_dir=tmp_path)
    )
    proc = haproxy_check(text, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"stats socket {tmp_path}/haproxy.sock mode 600 level admin expose-fd listeners" in text
    assert "master-worker" not in text  # -W on the command line sets the mode (HAProxy 3.5 drops the keyword)
    assert "hard-stop-after" in text
    assert "bind 127.0.0.1:9301" in text and "bind 127.0.0.1:9302" in text
    assert "server node1_web-1 10.0.0.5:8080 weight 1" in text
    assert "server node2_web-2 [fd00::5]:8080 weight 5" in text  # IPv6 in brackets


def test_an_ipv6_bind_address_renders_a_valid_config(tmp_path):
    settings = Settings(state_dir=tmp_path, bind="::1")
    text = render.render(render.load_template(render.default_template()), snapshot(), settings)
    assert "bind [::1]:9302" in text
    proc = haproxy_check(text, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_an_empty_snapshot_still_renders_a_valid_config(tmp_path):
    text = render.render(
        render.load_template(render.default_template()), Snapshot(()), Settings(state_dir=tmp_path)
    )
    proc = haproxy_check(text, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_template_syntax_error_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "bad.j2", "global\n    master-worker\n{% for r in routes %}\n")
    with pytest.raises(render.RenderError) as err:
        render.load_template(path)
    assert str(err.value).startswith(f"{path}:3: ")
    assert (err.value.file, err.value.line) == (str(path), 3)


def test_an_undefined_variable_names_the_file_and_line(tmp_path):
    path = write(
        tmp_path,
        "undef.j2",
        "global\n\n{% for r in routes %}\nbind {{ r.service }}:{{ r.prot }}\n{% endfor %}\n",
    )
    template = render.load_template(path)
    with pytest.raises(render.RenderError) as err:
        render.render(template, snapshot(), Settings(state_dir=tmp_path))
    assert str(err.value).startswith(f"{path}:4: ")
    assert "prot" in str(err.value)


def test_an_undefined_top_level_name_is_an_error_not_an_empty_string(tmp_path):
    template = render.load_template(write(tmp_path, "t.j2", "a\nb {{ nope }}\n"))
    with pytest.raises(render.RenderError, match=r"t\.j2:2: 'nope' is undefined"):
        render.render(template, snapshot(), Settings(state_dir=tmp_path))


def test_an_error_in_an_included_template_names_the_included_file(tmp_path):
    write(tmp_path, "part.j2", "ok\n{{ 1 // 0 }}\n")
    template = render.load_template(write(tmp_path, "main.j2", "x\n{% include 'part.j2' %}\n"))
    with pytest.raises(render.RenderError) as err:
        render.render(template, snapshot(), Settings(state_dir=tmp_path))
    assert str(err.value).startswith(f"{tmp_path / 'part.j2'}:2: ZeroDivisionError")


def test_a_missing_template_file_is_a_render_error(tmp_path):
    with pytest.raises(render.RenderError, match="not found"):
        render.load_template(tmp_path / "missing.j2")


def test_the_sandbox_keeps_templates_away_from_python_internals(tmp_path):
    template = render.load_template(
        write(tmp_path, "evil.j2", "{{ routes.__class__.__mro__[1].__subclasses__() }}\n")
    )
    with pytest.raises(render.RenderError):
        render.render(template, snapshot(), Settings(state_dir=tmp_path))


def test_templates_cannot_mutate_the_context(tmp_path):
    template = render.load_template(write(tmp_path, "m.j2", "{{ routes.append(1) }}\n"))
    with pytest.raises(render.RenderError, match=r"m\.j2:1"):
        render.render(template, snapshot(), Settings(state_dir=tmp_path))


def test_nothing_is_html_escaped_and_the_trailing_newline_is_kept(tmp_path):
    template = render.load_template(write(tmp_path, "e.j2", "acl a path_beg {{ '/a&b<c>' }}\n"))
    assert render.render(template, snapshot(), Settings(state_dir=tmp_path)) == "acl a path_beg /a&b<c>\n"


def test_the_context_has_the_documented_fields_and_no_secrets(tmp_path):
    settings = Settings(state_dir=tmp_path, consul_http=ConsulHTTP(token="s3cret-token"))
    ctx = render.context(snapshot(), settings)
    assert set(ctx) == {
        "routes",
        "bind",
        "bind_host",
        "state_dir",
        "stats_socket",
        "master_socket",
        "settings",
        "haproxy_user",
        "haproxy_group",
        "haproxy_log",
        "route_part",
        "route_parts",
    }
    web = ctx["routes"][1]
    assert set(web) == {
        "service", "port", "mode", "tag", "options", "datacenter", "failover", "instances", "backups",
        "backup_datacenter",
    }  # fmt: skip
    assert (web["service"], web["port"], web["mode"], web["tag"]) == ("web", 9302, "http", None)
    assert set(web["options"]) == set(route_options.NAMES)
    assert web["options"]["ssl"] is False and web["options"]["balance"] is None
    first = web["instances"][0]
    assert set(first) == {
        "id", "node", "address", "hostname", "port", "endpoint", "tags", "meta", "weight", "key",
    }  # fmt: skip
    assert first["meta"] == {"zone": "a"} and first["tags"] == ["v1"] and first["key"] == "node1_web-1"
    assert [i["hostname"] for i in web["instances"]] == [False, False, True]
    assert "s3cret-token" not in repr(ctx)
    for name in ("bind", "state_dir", "stats_socket", "master_socket"):
        assert ctx["settings"][name] == ctx[name]


def documented_names(page: str) -> Dict[str, Set[str]]:
    """The names of each table of docs/templates.md, by section: {"Top level": {"routes", ...}, ...}."""
    sections: Dict[str, Set[str]] = {}
    section = ""
    for line in page.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        else:
            row = re.match(r"\| `([a-z_]+)` \|", line)
            if row and section:
                sections.setdefault(section, set()).add(row.group(1))
    return sections


def test_the_context_is_documented_once_in_docs_templates_md_name_for_name(tmp_path):
    documented = documented_names((ROOT / "docs" / "templates.md").read_text())
    failover = Route("web", 9302, "http", failover=("dc2",))
    backup = Instance("web-9", "node9", "10.0.1.9", 8080, datacenter="dc2")
    state = RouteState(failover, snapshot().routes[1].instances, (backup,), "dc2")
    ctx = render.context(Snapshot((state,)), Settings(state_dir=tmp_path))
    route = ctx["routes"][0]
    assert documented == {
        "Top level": set(ctx),
        "Each route": set(route),
        "Each instance": set(route["instances"][0]),
        "options": set(route["options"]),
        "settings": set(ctx["settings"]),
    }
    assert set(route["backups"][0]) == set(route["instances"][0])  # "instances too"
    # The other two places point here instead of describing the context again.
    header = render.default_template().read_text().split("#}", 1)[0]
    for place in (render.__doc__ or "", header):
        assert "docs/templates.md" in place
        assert not {"master_socket", "backup_datacenter", "check_interval"} & set(re.findall(r"\w+", place))


def test_haproxy_workers_drop_to_the_configured_user_and_stay_put_without_one(tmp_path):
    template = render.load_template(render.default_template())
    as_root = Settings(state_dir=tmp_path, haproxy_user="haproxy", haproxy_group="haproxy")
    text = render.render(template, snapshot(), as_root)
    assert "\n    user haproxy\n    group haproxy\n" in text
    assert "\n    user " not in render.render(template, snapshot(), Settings(state_dir=tmp_path))


def test_each_frontend_logs_its_traffic_to_stdout_unless_haproxy_log_is_off(tmp_path):
    template = render.load_template(render.default_template())
    on = render.render(template, snapshot(), Settings(state_dir=tmp_path))
    db, web = on.split("\nfrontend ")[1:]
    assert "log stdout format raw local0\n    option tcplog\n" in db.split("\nbackend ")[0]
    assert "log stdout format raw local0\n    option httplog\n" in web.split("\nbackend ")[0]
    # Only frontends log: a global or backend target would repeat what HAProxy prints on stderr.
    assert on.count("\n    log ") == 2
    proc = haproxy_check(on, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    off = render.render(template, snapshot(), Settings(state_dir=tmp_path, haproxy_log=False))
    assert "\n    log " not in off and "option httplog" not in off and "option tcplog" not in off


def test_haproxy_template_refuses_a_printed_line_break_other_templates_keep_it(tmp_path):
    """A KV value (or env()) with a newline must not add a directive to HAProxy's config."""
    path = tmp_path / "t.j2"
    path.write_text("maxconn {{ value }}\n")
    strict = render.load_template(path, single_line=True)
    assert render.render_context(strict, {"value": "100"}) == "maxconn 100\n"
    for hostile in ("100\n    lua-load /tmp/x.lua", "100\r", "1\x00", "1\u2028x"):
        with pytest.raises(render.RenderError) as caught:
            render.render_context(strict, {"value": hostile})
        assert caught.value.line == 1 and "line break" in caught.value.message
    plain = render.load_template(path)
    assert render.render_context(plain, {"value": "a\nb"}) == "maxconn a\nb\n"
