"""Templates for any file (issue 6), end to end: the zipapp's sync loop against a real Consul agent.

Each test writes a config with [templates.NAME] tables, starts `dist/basenode sync` (or `run`, when a
supervised program must get a signal) against the test's own agent, and changes Consul the way an
operator would; the assertions are on the files a user's programs read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, List

import pytest

from basenode.template.render import default_template
from tests.conftest import ZIPAPP
from tests.support.basenode_run import terminate
from tests.support.consul_agent import ConsulAgent
from tests.support.consul_proxy import ConsulProxy
from tests.support.ports import free_port
from tests.support.waiting import eventually


class Basenode:
    """`dist/basenode COMMAND --no-consul --no-haproxy` with a config file, output to a log file."""

    def __init__(self, tmp: Path, consul_addr: str, config: str, command: str = "sync") -> None:
        if not ZIPAPP.exists():
            pytest.fail(f"{ZIPAPP} is missing; run `make zipapp`", pytrace=False)
        self.tmp = tmp
        self.config = tmp / "basenode.toml"
        self.config.write_text(textwrap.dedent(config).replace("TMP", str(tmp)))
        self.log_path = tmp / f"basenode-{command}.log"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("BASENODE_", "CONSUL_"))},
            "CONSUL_HTTP_ADDR": consul_addr,
        }
        self.status_addr = f"127.0.0.1:{free_port()}"
        argv = [
            sys.executable,
            str(ZIPAPP),
            command,
            "--no-consul",
            "--no-haproxy",
            "--config",
            str(self.config),
            "--state-dir",
            str(tmp / "state"),
            "--status-addr",
            self.status_addr,
        ]
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str):
        """(status code, JSON body) of a path of the sync loop's status endpoint."""
        try:
            with urllib.request.urlopen(f"http://{self.status_addr}{path}", timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self) -> None:
        terminate(self.proc)
        self.log.close()


@pytest.fixture
def start(tmp_path: Path) -> Iterator:
    started: List[Basenode] = []

    def run(consul_addr: str, config: str, command: str = "sync") -> Basenode:
        node = Basenode(tmp_path, consul_addr, config, command)
        started.append(node)
        return node

    yield run
    for node in started:
        node.stop()


def text_of(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def replace(path: Path, text: str) -> None:
    """Edit a file as an editor saves it (write beside, rename over): never seen half-written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def has_text(path: Path, expected: str):
    return lambda: text_of(path) == expected


# The application: as it starts and on each SIGHUP it appends what its config file holds to a marker
# file (the file is read as the app starts, before the handler is set: a HUP then would kill it).
APP = """\
import pathlib, signal, sys, time
conf, marker = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
marker.open("a").write("START " + (conf.read_text() if conf.exists() else "no file\\n"))
signal.signal(signal.SIGHUP, lambda *_: marker.open("a").write("HUP " + conf.read_text()))
while True:
    time.sleep(1)
"""


def test_a_kv_key_rendered_into_an_app_config_signals_the_app_and_its_deletion_renders_the_default(
    tmp_path, consul_agent: ConsulAgent, start
):
    key = "app/greeting"
    consul_agent.kv_put(key, "hello")
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "app.conf.j2").write_text(
        'greeting = {{ kv("app/greeting", "default-greeting") | tojson }}\n'
    )
    conf, marker = tmp_path / "app.conf", tmp_path / "hups"
    node = start(
        consul_agent.http_addr,
        f"""
        [programs.myapp]
        command = ["{sys.executable}", "TMP/app.py", "TMP/app.conf", "TMP/hups"]
        autorestart = "always"

        [templates.app]
        source = "TMP/app.conf.j2"
        destination = "TMP/app.conf"
        reload_program = "myapp"
        reload_signal = "HUP"
        """,
        command="run",
    )
    eventually(has_text(conf, 'greeting = "hello"\n'), timeout=30, what="the first render")
    eventually(lambda: text_of(marker) == 'START greeting = "hello"\n', what="the app, on the first render")

    consul_agent.kv_put(key, "bonjour")
    eventually(has_text(conf, 'greeting = "bonjour"\n'), what="the file to follow the key")
    eventually(
        lambda: 'HUP greeting = "bonjour"' in text_of(marker), what="the app to get SIGHUP after the write"
    )

    consul_agent.kv_delete(key)
    eventually(has_text(conf, 'greeting = "default-greeting"\n'), what="the default once the key is gone")
    eventually(lambda: 'HUP greeting = "default-greeting"' in text_of(marker), what="the app's SIGHUP")
    # It started once, after the first render, on the rendered file (not signalled for that one),
    # and got one signal per change.
    assert text_of(marker).splitlines() == [
        'START greeting = "hello"',
        'HUP greeting = "bonjour"',
        'HUP greeting = "default-greeting"',
    ]
    assert "Traceback" not in node.output()


PLUGIN = """\
def context(snapshot):
    return {"greeting": "hello from a plugin", "routes": len(snapshot.routes)}
"""

BROKEN_PLUGIN = """\
def context(snapshot):
    raise RuntimeError("the plugin broke")
"""


def test_a_plugin_adds_variables_and_one_that_raises_is_reported_and_contained(
    tmp_path, consul_agent_session: ConsulAgent, start
):
    agent = consul_agent_session
    key = f"plugin-test/{free_port()}"
    agent.kv_put(key, "one")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "extra.py").write_text(PLUGIN)
    (tmp_path / "t.j2").write_text(f'{{{{ greeting }}}} ({{{{ routes }}}} routes) {{{{ kv("{key}") }}}}\n')
    out = tmp_path / "out.txt"
    node = start(
        agent.http_addr,
        """
        plugins_dir = "TMP/plugins"
        [templates.greet]
        source = "TMP/t.j2"
        destination = "TMP/out.txt"
        plugins = ["extra"]
        """,
    )
    eventually(
        has_text(out, "hello from a plugin (0 routes) one\n"), timeout=30, what="the plugin's variables"
    )

    replace(plugins / "extra.py", BROKEN_PLUGIN)
    agent.kv_put(key, "two")
    eventually(
        lambda: f"{plugins}/extra.py:2: context() raised RuntimeError: the plugin broke" in node.output(),
        what="the plugin's failure reported with its file and line",
    )
    assert text_of(out) == "hello from a plugin (0 routes) one\n"  # the last good output stays

    replace(plugins / "extra.py", PLUGIN.replace("hello", "hello again"))
    eventually(has_text(out, "hello again from a plugin (0 routes) two\n"), what="the mended plugin's output")


def test_two_templates_using_the_same_service_hold_one_blocking_query_for_it(
    tmp_path, consul_agent_session: ConsulAgent, start
):
    agent = consul_agent_session
    service = f"shared-{free_port()}"
    agent.register(service, 8001, service_id=f"{service}-1")
    proxy = ConsulProxy(agent.http_addr)
    counts = proxy.per_path
    try:
        body = f'{{% for i in service("{service}") %}}server {{{{ i.endpoint }}}}\n{{% endfor %}}'
        (tmp_path / "a.j2").write_text("# a\n" + body)
        (tmp_path / "b.j2").write_text("# b\n" + body)
        start(
            proxy.http_addr,
            """
            [templates.a]
            source = "TMP/a.j2"
            destination = "TMP/a.conf"
            [templates.b]
            source = "TMP/b.j2"
            destination = "TMP/b.conf"
            """,
        )
        path = f"/v1/health/service/{service}"
        eventually(
            has_text(tmp_path / "a.conf", "# a\nserver 127.0.0.1:8001\n"), timeout=30, what="a rendered"
        )
        eventually(has_text(tmp_path / "b.conf", "# b\nserver 127.0.0.1:8001\n"), what="b rendered")
        eventually(lambda: counts.in_flight[path] == 1, what="the blocking query on the service")

        agent.register(service, 8002, service_id=f"{service}-2")
        two = "server 127.0.0.1:8001\nserver 127.0.0.1:8002\n"
        eventually(has_text(tmp_path / "a.conf", "# a\n" + two), what="a to follow the catalog")
        eventually(has_text(tmp_path / "b.conf", "# b\n" + two), what="b to follow the catalog")
        eventually(lambda: counts.in_flight[path] == 1, what="the next blocking query on the service")

        assert counts.max_in_flight[path] == 1  # never two held open for one dependency
        # One plain first read, then one blocking read per wake: never one per template.
        assert counts.requests[path] - counts.blocking[path] == 1
    finally:
        proxy.close()


def test_a_broken_template_or_a_failing_check_leaves_the_destination_as_it_was(
    tmp_path, consul_agent_session: ConsulAgent, start
):
    agent = consul_agent_session
    key = f"broken-test/{free_port()}"
    agent.kv_put(key, "ok-1")
    template = tmp_path / "t.j2"
    template.write_text(f'value = {{{{ kv("{key}") }}}}\n')
    out = tmp_path / "out.conf"
    node = start(
        agent.http_addr,
        """
        [templates.t]
        source = "TMP/t.j2"
        destination = "TMP/out.conf"
        check = ["grep", "-q", "value = ok", "{candidate}"]
        """,
    )
    eventually(has_text(out, "value = ok-1\n"), timeout=30, what="the first render")

    replace(template, "value = {% if %}\n")  # a syntax error: the running file stays
    eventually(lambda: f"{template}:1" in node.output(), what="the template error with its file:line")
    agent.kv_put(key, "ok-2")
    replace(template, "value = {{ undefined_name }}\n")  # a render error
    eventually(lambda: "'undefined_name' is undefined" in node.output(), what="the render error")
    assert text_of(out) == "value = ok-1\n"

    replace(template, f'value = {{{{ kv("{key}") }}}}\n')
    eventually(has_text(out, "value = ok-2\n"), what="the mended template's output")

    agent.kv_put(key, "bad")  # the check rejects it
    eventually(lambda: "check rejected the new file" in node.output(), what="the check's rejection")
    assert text_of(out) == "value = ok-2\n"
    assert not list(tmp_path.glob(".basenode-candidate.*"))  # no candidate left behind

    code, health = node.get("/health")
    assert code == 503
    assert any(p.startswith("templates: t: check rejected the new file") for p in health["problems"])
    counts = node.get("/status")[1]["templates"]["t"]
    # The rejected file is checked again every 2 s (what the check needs may appear): one or more.
    assert (counts["render_errors"], counts["writes"]) == (2, 2) and counts["check_failures"] >= 1
    shown = subprocess.run(
        [sys.executable, str(ZIPAPP), "status", "--status-addr", node.status_addr],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    row = next(line for line in shown.splitlines() if line.startswith("t "))
    assert row.split()[1] == "2" and int(row.split()[2]) >= 3  # writes, errors


def test_an_unwritable_destination_fails_its_template_only_and_a_failed_reload_is_retried(
    tmp_path, consul_agent_session: ConsulAgent, start
):
    (tmp_path / "odd.j2").write_text("odd\n")
    (tmp_path / "app.j2").write_text("app\n")
    ready, reloads = tmp_path / "ready", tmp_path / "reloads"
    node = start(
        consul_agent_session.http_addr,
        f"""
        [templates.odd]
        source = "TMP/odd.j2"
        destination = "TMP/odd.conf"

        [templates.app]
        source = "TMP/app.j2"
        destination = "TMP/app.conf"
        reload_command = "test -e {ready} && echo reloaded >> {reloads}"
        shell = true
        """,
    )
    eventually(has_text(tmp_path / "odd.conf", "odd\n"), timeout=30, what="the first render")
    eventually(has_text(tmp_path / "app.conf", "app\n"), what="the app's file")
    eventually(
        lambda: node.get("/status")[1]["templates"]["app"]["reload_failures"], what="the failed reload"
    )
    assert node.get("/health")[0] == 503

    ready.touch()  # the program can be reloaded now: a retry reloads it, without writing again
    eventually(has_text(reloads, "reloaded\n"), timeout=15, what="the retried reload")
    eventually(lambda: node.get("/health")[0] == 200, what="healthy again")
    assert node.get("/status")[1]["templates"]["app"]["writes"] == 1

    (tmp_path / "odd.conf").unlink()
    (tmp_path / "odd.conf").mkdir()  # a directory where the file should be
    replace(tmp_path / "odd.j2", "odd 2\n")
    eventually(lambda: node.get("/status")[1]["templates"]["odd"]["output_errors"], what="the odd failure")
    assert "IsADirectoryError" in node.get("/status")[1]["templates"]["odd"]["last_error"]
    replace(tmp_path / "app.j2", "app 2\n")  # the sync process carries on with the other template
    eventually(has_text(tmp_path / "app.conf", "app 2\n"), what="the other template's new file")
    assert node.proc.poll() is None


def test_a_query_no_template_uses_any_more_stops_being_watched(tmp_path, consul_agent_session, start):
    agent = consul_agent_session
    prefix = f"stop-test/{free_port()}"
    agent.kv_put(f"{prefix}/flag", "on")
    agent.kv_put(f"{prefix}/extra", "x1")
    proxy = ConsulProxy(agent.http_addr)
    counts = proxy.per_path
    try:
        (tmp_path / "t.j2").write_text(
            f'{{% if kv("{prefix}/flag", "off") == "on" %}}extra={{{{ kv("{prefix}/extra", "none") }}}}'
            "{% else %}off{% endif %}\n"  # trim_blocks: the block tag eats this newline
        )
        out = tmp_path / "out.txt"
        start(
            proxy.http_addr,
            """
            [watch]
            blocking_wait = "2s"
            [templates.t]
            source = "TMP/t.j2"
            destination = "TMP/out.txt"
            """,
        )
        extra = f"/v1/kv/{prefix}/extra"
        eventually(has_text(out, "extra=x1"), timeout=30, what="the first render")
        eventually(lambda: counts.in_flight[extra] == 1, what="the blocking query on the extra key")

        agent.kv_put(f"{prefix}/flag", "off")  # the template no longer calls kv(".../extra")
        eventually(has_text(out, "off"), what="the render without the extra key")
        eventually(lambda: counts.in_flight[extra] == 0, what="the extra key's query to end")
        asked = counts.requests[extra]
        agent.kv_put(f"{prefix}/extra", "x2")
        agent.kv_put(f"{prefix}/flag", "still off")
        eventually(has_text(out, "off"), what="another render")
        eventually(
            lambda: counts.blocking[f"/v1/kv/{prefix}/flag"] >= 3, what="the flag's next blocking query"
        )
        assert counts.requests[extra] == asked  # nobody watches it any more

        agent.kv_put(f"{prefix}/flag", "on")
        eventually(has_text(out, "extra=x2"), what="the extra key watched again")
    finally:
        proxy.close()


def test_haproxys_own_template_can_use_the_template_functions(tmp_path, consul_agent, start_basenode):
    key = f"haproxy/comment-{free_port()}"
    template = tmp_path / "haproxy.cfg.j2"
    template.write_text(default_template().read_text() + f'# tuned by {{{{ kv("{key}", "nobody") }}}}\n')
    node = start_basenode(f"web:{free_port()}", "--template", str(template))
    live = node.state_dir / "haproxy.cfg"
    eventually(lambda: text_of(live).endswith("# tuned by nobody\n"), timeout=30, what="the default rendered")
    consul_agent.kv_put(key, "kv")
    eventually(lambda: text_of(live).endswith("# tuned by kv\n"), what="HAProxy's config to follow the key")
    assert "render" not in " ".join(node.health()[1]["problems"])


def test_check_compiles_and_renders_every_template_and_names_the_faulty_one(tmp_path, consul_agent_session):
    key = f"check-test/{free_port()}"
    consul_agent_session.kv_put(key, "v")
    (tmp_path / "good.j2").write_text(f'{{{{ kv("{key}") }}}}\n')
    (tmp_path / "bad.j2").write_text("{{ kv('x') }\n")
    config = tmp_path / "basenode.toml"
    config.write_text(
        f'[templates.good]\nsource = "{tmp_path}/good.j2"\ndestination = "{tmp_path}/good.txt"\n'
        f'[templates.bad]\nsource = "{tmp_path}/bad.j2"\ndestination = "{tmp_path}/bad.txt"\n'
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BASENODE_", "CONSUL_"))},
        "CONSUL_HTTP_ADDR": consul_agent_session.http_addr,
    }
    argv = [sys.executable, str(ZIPAPP), "check", "--no-consul", "--no-haproxy", "--config", str(config)]
    argv += ["--state-dir", str(tmp_path / "state")]
    failed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2
    assert failed.stderr.startswith(f"basenode: template bad: {tmp_path}/bad.j2:1: ")
    (tmp_path / "bad.j2").write_text("{{ kv('x', 'default') }}\n")
    passed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert passed.returncode == 0 and passed.stdout.rstrip().endswith("template good, template bad")
    assert not (tmp_path / "good.txt").exists()  # check writes nothing
