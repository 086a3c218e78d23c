"""A real nginx (Debian's package) supervised by basenode, its upstream rendered from service("web").

Issue 6's acceptance as a user meets it: `[programs.nginx]` runs nginx in the foreground under
basenode; `[templates.nginx]` renders nginx.conf from the catalog, checks each candidate with
`nginx -t`, and signals nginx with SIGHUP (through PID 1) once the new file is in place. The Consul
agent is the test's own (`--no-consul`), and basenode runs no HAProxy (`--no-haproxy`): the template
engine is the only thing routing here. nginx's prefix, pid file, temp paths and error log are all in
the test's temp dir, so it needs no root-owned directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import pytest

from tests.conftest import require_binary
from tests.support.backends import Load, names_seen
from tests.support.basenode_run import Basenode, serving
from tests.support.ports import free_port
from tests.support.waiting import eventually

# The upstream is the only part that comes from Consul; @DIR@ and @PORT@ are filled in by the test.
# No instance at all would make `upstream` empty, which nginx refuses: a `down` server stands in.
NGINX_TEMPLATE = """\
# rendered by basenode from service("web")
worker_processes 1;
pid @DIR@/nginx.pid;
error_log stderr notice;
events { worker_connections 512; }

http {
    access_log off;
    client_body_temp_path @DIR@/client_body;
    proxy_temp_path @DIR@/proxy;
    fastcgi_temp_path @DIR@/fastcgi;
    uwsgi_temp_path @DIR@/uwsgi;
    scgi_temp_path @DIR@/scgi;

    upstream web {
{% for instance in service("web") %}
        server {{ instance.endpoint }};
{% else %}
        server 127.0.0.1:9 down;
{% endfor %}
        keepalive 8;
    }

    server {
        listen 127.0.0.1:@PORT@;
        location / {
            proxy_pass http://web;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
"""

CONFIG = """\
# No depends_on: a program that a template reloads starts after the sync loop's first renders.
[programs.nginx]
command = ["nginx", "-g", "daemon off;", "-p", "@DIR@/", "-e", "stderr", "-c", "@DIR@/nginx.conf"]
autorestart = "always"
stop_signal = "QUIT"

[templates.nginx]
source = "@TEMPLATE@"
destination = "@DIR@/nginx.conf"
check = ["nginx", "-t", "-q", "-p", "@DIR@/", "-e", "stderr", "-c", "{candidate}"]
reload_program = "nginx"
reload_signal = "HUP"
"""


class Nginx:
    """nginx's files in the test's temp dir: the template, the rendered config, the pid file."""

    def __init__(self, tmp: Path) -> None:
        require_binary("nginx")
        self.dir = tmp / "nginx"
        self.dir.mkdir()
        self.port = free_port()
        self.template = tmp / "nginx.conf.j2"
        self.conf = self.dir / "nginx.conf"
        self.config = tmp / "basenode.toml"
        self.template.write_text(self.fill(NGINX_TEMPLATE))
        self.config.write_text(self.fill(CONFIG))

    def fill(self, text: str) -> str:
        for name, value in (("DIR", self.dir), ("PORT", self.port), ("TEMPLATE", self.template)):
            text = text.replace(f"@{name}@", str(value))
        return text

    def master_pid(self) -> int:
        return int((self.dir / "nginx.pid").read_text())


@pytest.fixture
def nginx(tmp_path: Path, start_basenode) -> Tuple[Nginx, Basenode]:
    """basenode running nginx and its template, and no HAProxy: no route, `--no-haproxy`."""
    files = Nginx(tmp_path)
    return files, start_basenode("", "--no-haproxy", "--config", str(files.config))


def test_nginx_routing_follows_the_instances_of_web_with_no_failed_request(consul_agent, backends, nginx):
    files, node = nginx
    a, b, c = backends.start("a"), backends.start("b"), backends.start("c")
    consul_agent.register("web", a.port, service_id="web-a")
    consul_agent.register("web", b.port, service_id="web-b")
    eventually(serving(files.port, ["a", "b"]), timeout=30, what="a and b through nginx")
    master = files.master_pid()

    # Through the same running nginx, under load: each change renders nginx.conf, `nginx -t` passes
    # it, and SIGHUP makes nginx take it (new workers; the old ones finish what they serve).
    steps = (
        (lambda: consul_agent.register("web", c.port, service_id="web-c"), ["a", "b", "c"]),
        (lambda: consul_agent.deregister("web-a"), ["b", "c"]),
        (lambda: consul_agent.set_check("web-b", "critical"), ["c"]),
        (lambda: consul_agent.set_check("web-b", "passing"), ["b", "c"]),
        (lambda: consul_agent.register("web", a.port, service_id="web-a"), ["a", "b", "c"]),
        (lambda: consul_agent.deregister("web-c"), ["a", "b"]),
    )
    with Load(files.port, retry_idle_close=True) as load:
        for change, expected in steps:
            change()
            eventually(serving(files.port, expected), timeout=60, what=f"nginx to route to {expected}")
            load.wait_for_more(20)
    assert load.failures == [], load.failures[:5]
    assert load.ok > 100
    assert files.master_pid() == master  # reloaded in place, never restarted
    (nginx_program,) = [p for p in node.status()["programs"] if p["name"] == "nginx"]
    assert nginx_program["restarts"] == 0  # started once, on the first rendered nginx.conf
    assert node.output().count("(SIGHUP) received") >= len(steps), node.output()[-3000:]


def test_a_broken_template_leaves_nginx_serving_the_old_config(consul_agent, backends, nginx):
    files, node = nginx
    a, b = backends.start("a"), backends.start("b")
    consul_agent.register("web", a.port, service_id="web-a")
    eventually(serving(files.port, ["a"]), timeout=30, what="a through nginx")
    master = files.master_pid()
    good_template = files.template.read_text()
    good_conf = files.conf.read_text()

    # A template that renders a config nginx refuses: the check keeps it out, nginx is not signalled.
    files.template.write_text(
        good_template.replace("keepalive 8;", "keepalive 8;\n        no_such_directive on;")
    )
    consul_agent.register("web", b.port, service_id="web-b")  # a catalog change renders it too
    eventually(lambda: 'unknown directive "no_such_directive"' in node.output(), what="nginx -t's refusal")
    assert files.conf.read_text() == good_conf
    assert names_seen(files.port, 12) == ["a"]

    # A template Jinja2 cannot even parse: reported with its file and line, nothing written.
    lines = good_template.splitlines()
    files.template.write_text("\n".join([*lines, "{% if %}"]) + "\n")
    broken_at = f"{files.template}:{len(lines) + 1}:"
    eventually(lambda: broken_at in node.output(), what="the template's file:line")
    assert files.conf.read_text() == good_conf
    assert names_seen(files.port, 12) == ["a"]

    # Fixed: the next render goes through, and nginx routes to what the catalog says.
    files.template.write_text(good_template)
    eventually(serving(files.port, ["a", "b"]), timeout=60, what="the fixed template to route to a and b")
    assert files.master_pid() == master and node.proc.poll() is None
