"""Hostile neighbours (issue 12): a local user, a child process or a bad value gets no further than its
own corner. Each test runs the real zipapp (as root, as the suite runs) and fails on basenode before
the fix it checks.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

from basenode import control
from tests.conftest import ROOT, ZIPAPP
from tests.support import procs
from tests.support.ports import free_port
from tests.support.waiting import eventually

NOBODY = pwd.getpwnam("nobody")


def clean_env(**extra: str) -> Dict[str, str]:
    """The test's environment without basenode's or Consul's settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BASENODE_", "CONSUL_"))}
    env["BASENODE_CONFIG"] = os.devnull
    env.update(extra)
    return env


def run_argv(state_dir: Path, *options: str, command: Sequence[str] = ("true",)) -> list:
    if not ZIPAPP.exists():
        pytest.fail(f"{ZIPAPP} is missing; run `make zipapp`", pytrace=False)
    return [
        sys.executable,
        str(ZIPAPP),
        "run",
        "--no-consul",
        "--no-haproxy",
        "--state-dir",
        str(state_dir),
        "--status-addr",
        f"127.0.0.1:{free_port()}",
        *options,
        "--",
        *command,
    ]


def run_once(
    state_dir: Path, *options: str, command: Sequence[str] = ("true",), env: Optional[Dict[str, str]] = None
) -> subprocess.CompletedProcess:
    """`basenode run ... -- COMMAND` to its end: (status, output)."""
    return subprocess.run(
        run_argv(state_dir, *options, command=command),
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- 6. the state dir ---------------------------------------------------------------------------


def test_a_world_writable_state_dir_of_ours_is_made_0700(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o1777)  # what `docker run --tmpfs /run/basenode` gives
    done = run_once(state)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(os.lstat(state).st_mode) == 0o700


def test_a_state_dir_owned_by_another_user_is_refused_before_anything_starts(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY.pw_uid, NOBODY.pw_gid)
    marker = tmp_path / "app-ran"
    done = run_once(state, command=("touch", str(marker)))
    assert done.returncode == 2
    assert str(state) in done.stderr and f"owner uid {NOBODY.pw_uid}" in done.stderr, done.stderr
    assert not marker.exists(), "the application ran in a state dir another user controls"
    assert not (state / "control.sock").exists()


def test_a_state_dir_that_is_a_symlink_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    state = tmp_path / "state"
    state.symlink_to(target)
    done = run_once(state)
    assert done.returncode == 2
    assert f"state dir {state} is a symlink" in done.stderr, done.stderr
    assert not (target / "control.sock").exists()


# --- 3. the status endpoint's bounds -----------------------------------------------------------


def sync_pid(node) -> int:
    found = [p for p in node.status()["programs"] if p["name"] == "sync"]
    assert found and found[0]["pid"], node.status()["programs"]
    return found[0]["pid"]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def open_idle(host: str, port: int, count: int) -> List[socket.socket]:
    held = []
    for _ in range(count):
        s = socket.create_connection((host, port), timeout=10)
        held.append(s)
    return held


def test_500_idle_connections_and_endless_headers_leave_health_answering_and_the_sync_process_bounded(
    consul_agent, backends, start_basenode
):
    a = backends.start("a")
    consul_agent.register("web", a.port, service_id="web-a")
    node = start_basenode(f"web:{free_port()}/http")
    eventually(node.healthy, timeout=60, what="/health 200")
    pid = sync_pid(node)
    threads_before, rss_before = procs.threads(pid), rss_kib(pid)
    host, port = node.status_addr.rsplit(":", 1)

    held = open_idle(host, int(port), 500)

    def endless_header(s: socket.socket) -> None:
        with contextlib.suppress(OSError):
            s.sendall(b"GET /health HTTP/1.1\r\nX-Filler: ")
            for _ in range(256):  # 4 MiB of one header that never ends
                s.sendall(b"a" * 16384)

    slow = open_idle(host, int(port), 40)
    senders = [threading.Thread(target=endless_header, args=(s,), daemon=True) for s in slow]
    try:
        for t in senders:
            t.start()
        code, health = node.health()  # answered while all of them are held
        assert code == 200, health
        assert procs.threads(pid) <= threads_before + 2, "a thread per connection"
        for t in senders:
            t.join(timeout=30)
        assert rss_kib(pid) - rss_before < 30 * 1024, "the endless headers were kept in memory"
        assert procs.threads(pid) <= threads_before + 2
    finally:
        for s in held + slow:
            s.close()
    assert node.health()[0] == 200
    assert node.proc.poll() is None


def test_a_status_addr_that_is_not_loopback_is_warned_about(consul_agent, start_basenode):
    port = free_port()
    other = start_basenode(f"web:{free_port()}", "--status-addr", f"0.0.0.0:{port}")
    eventually(lambda: "is not loopback" in other.output(), timeout=60, what="the warning")
    assert f"0.0.0.0:{port} is not loopback" in other.output()


# --- 7. the control socket --------------------------------------------------------------------

# On HUP it leaves an orphan behind (the sleep, its shell gone), re-parented to basenode.
HUP_APP = """
trap 'sh -c "sleep 1 & echo \\$! > {marker}.orphan"; echo hup >> {marker}' HUP
echo started > {marker}
while true; do sleep 0.1; done
"""


def start_hup_app(state: Path, marker: Path) -> subprocess.Popen:
    """`basenode run -- sh HUP_APP`; its stderr is a pipe (read it with communicate())."""
    return subprocess.Popen(
        run_argv(state, command=("sh", "-c", HUP_APP.format(marker=marker))),
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_a_client_trickling_bytes_to_the_control_socket_holds_up_neither_reaping_nor_signals(tmp_path):
    state, marker = tmp_path / "state", tmp_path / "marker"
    node = start_hup_app(state, marker)
    try:
        eventually(lambda: marker.exists() and (state / "control.sock").exists(), timeout=30, what="the app")
        trickler = socket.socket(socket.AF_UNIX)
        trickler.connect(str(state / "control.sock"))
        cut_off = threading.Event()
        stop = threading.Event()

        def trickle() -> None:  # a byte every 0.3 s, never a whole line
            with contextlib.suppress(OSError):
                while not stop.wait(0.3):
                    trickler.send(b" ")
                return
            cut_off.set()

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        try:
            # While it trickles: PID 1 answers others, forwards a signal and reaps an orphan.
            assert control.request(state, {"op": "programs"})["ok"] is True
            node.send_signal(signal.SIGHUP)
            eventually(lambda: "hup" in marker.read_text(), timeout=5, what="the HUP forwarded")
            orphan_pid = int(Path(f"{marker}.orphan").read_text())
            assert f"PPid:\t{node.pid}\n" in Path(f"/proc/{orphan_pid}/status").read_text()
            eventually(lambda: not os.path.exists(f"/proc/{orphan_pid}"), timeout=5, what="the orphan reaped")
            assert not stop.is_set() and thread.is_alive(), "the trickle ended before the checks"
            eventually(cut_off.is_set, timeout=10, what="the trickling client cut off by its deadline")
            assert b"no whole line" in trickler.recv(4096)
        finally:
            stop.set()
            trickler.close()
        assert node.poll() is None
    finally:
        node.terminate()
        node.communicate(timeout=30)


def test_deeply_nested_or_oversized_json_on_the_control_socket_gets_an_error_reply(tmp_path):
    state, marker = tmp_path / "state", tmp_path / "marker"
    node = start_hup_app(state, marker)
    try:
        eventually(lambda: (state / "control.sock").exists(), timeout=30, what="the control socket")
        for line, why in ((b"[" * 4000 + b"\n", b"nested deeper"), (b'"' + b"a" * 10000, b"longer than")):
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(str(state / "control.sock"))
                with contextlib.suppress(OSError):
                    s.sendall(line)
                reply = json.loads(s.recv(4096))
            assert reply["ok"] is False and why.decode() in reply["error"], reply
        assert control.request(state, {"op": "programs"})["ok"] is True
    finally:
        node.terminate()
        _, err = node.communicate(timeout=30)
    assert b"Traceback" not in err, err.decode(errors="replace")[-2000:]


# --- 2. children do not inherit basenode's secrets ---------------------------------------------

SECRETS = {
    "CONSUL_HTTP_TOKEN": "tok-3f1e9a-secret",
    "CONSUL_HTTP_AUTH": "user:pass-secret",
    "CONSUL_ENCRYPT": "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s=",
}


def secret_env(tmp_path: Path, **extra: str) -> Dict[str, str]:
    token_file, key_file = tmp_path / "token", tmp_path / "client.key"
    token_file.write_text(SECRETS["CONSUL_HTTP_TOKEN"])
    key_file.write_text("-----BEGIN PRIVATE KEY-----\n")
    return clean_env(
        **SECRETS, CONSUL_HTTP_TOKEN_FILE=str(token_file), CONSUL_CLIENT_KEY=str(key_file), **extra
    )


class Node:
    """`basenode run` in the background, its output in a file."""

    def __init__(self, argv: list, env: Dict[str, str], log: Path) -> None:
        self.log = log
        self.out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, env=env, stdout=self.out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def lines(self, program: str) -> List[str]:
        prefix = f"{program} | "
        return [line[len(prefix) :] for line in self.output().splitlines() if line.startswith(prefix)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.out.close()


PEEK = ["sh", "-c", "id -u; env; echo done"]


def write_env(path: Path) -> str:
    """A shell command writing its environment to `path` whole (then renamed): never read half-written."""
    return f"env > {path}.tmp && mv {path}.tmp {path}"


def test_the_app_and_programs_get_none_of_basenodes_secrets_unless_they_opt_in(tmp_path):
    cfg = tmp_path / "basenode.toml"
    cfg.write_text(
        '[programs.peek]\nuser = "nobody"\nautorestart = "never"\nstartsecs = 0\n'
        f"command = {json.dumps(PEEK)}\n"
        '[programs.optin]\nautorestart = "never"\nstartsecs = 0\npass_env = ["CONSUL_HTTP_TOKEN"]\n'
        f"command = {json.dumps(PEEK)}\n"
        '[programs.probed]\ncommand = ["sleep", "100"]\n'
        f"ready_command = {json.dumps(['sh', '-c', write_env(tmp_path / 'ready.env')])}\n"
    )
    app = ("sh", "-c", "id -u; id -g; env; echo done; exec sleep 100")
    node = Node(
        run_argv(tmp_path / "state", "--config", str(cfg), "--app-user", "nobody", "--app-group", "daemon",
                 "--app-output", "prefix", command=app),
        secret_env(tmp_path),
        tmp_path / "out.log",
    )  # fmt: skip
    try:
        eventually(
            lambda: all("done" in node.lines(p) for p in ("app", "peek", "optin")), timeout=30, what="output"
        )
        app_lines, peek, optin = node.lines("app"), node.lines("peek"), node.lines("optin")
        assert app_lines[:2] == [str(NOBODY.pw_uid), str(pwd.getpwnam("daemon").pw_gid)], app_lines
        assert peek[0] == str(NOBODY.pw_uid)
        ready_env = tmp_path / "ready.env"
        eventually(lambda: ready_env.exists() and "PATH=" in ready_env.read_text(), timeout=30, what="ready")
        ready = (tmp_path / "ready.env").read_text().splitlines()
        for name in (*SECRETS, "CONSUL_HTTP_TOKEN_FILE", "CONSUL_CLIENT_KEY"):
            assert not any(line.startswith(name + "=") for line in app_lines + peek + ready), name
            assert (name == "CONSUL_HTTP_TOKEN") == any(line.startswith(name + "=") for line in optin), name
        for value in SECRETS.values():
            assert value not in "\n".join(app_lines + peek + ready)
        assert any(line.startswith("PATH=") for line in app_lines), "the rest of the environment is kept"
    finally:
        node.stop()


def test_template_check_and_reload_commands_get_none_of_basenodes_secrets(consul_agent, tmp_path):
    source, dest = tmp_path / "t.j2", tmp_path / "out" / "t.txt"
    dest.parent.mkdir()
    source.write_text("{{ kv('app/x', 'none') }}\n")
    check, reload = (f"sh -c '{write_env(tmp_path / n)}'" for n in ("check.env", "reload.env"))
    spec = f"{source}:{dest}:{check}:{reload}"
    node = Node(
        run_argv(tmp_path / "state", "--template-spec", spec, command=("sleep", "100")),
        secret_env(tmp_path, CONSUL_HTTP_ADDR=consul_agent.http_addr),
        tmp_path / "out.log",
    )
    try:
        written = [tmp_path / "check.env", tmp_path / "reload.env"]
        eventually(lambda: all(p.exists() for p in written), timeout=30, what="the check and the reload")
        for name in ("check.env", "reload.env"):
            text = (tmp_path / name).read_text()
            for secret in (*SECRETS, "CONSUL_HTTP_TOKEN_FILE", "CONSUL_CLIENT_KEY"):
                assert f"\n{secret}=" not in "\n" + text, (name, secret)
    finally:
        node.stop()


# --- 5. no KV or env value in any error ----------------------------------------------------------

SECRET_VALUE = "s3cr3t-Value-9f2c"


def test_a_kv_value_that_breaks_haproxys_template_is_named_by_its_key_never_shown(
    consul_agent, start_basenode, tmp_path
):
    template = tmp_path / "haproxy.cfg.j2"
    template.write_text(
        (ROOT / "templates" / "haproxy.cfg.j2").read_text() + '\n# build {{ kv("app/build", "none") }}\n'
    )
    line = len(template.read_text().splitlines())
    consul_agent.kv_put("app/build", SECRET_VALUE + "\n")
    node = start_basenode(f"web:{free_port()}", "--template", str(template))
    eventually(lambda: node.problems("render: "), timeout=60, what="the render failure in /health")
    problem = node.problems("render: ")[0]
    assert f"haproxy.cfg.j2:{line}:" in problem and "kv key 'app/build'" in problem, problem
    assert "line break U+000A at character 18 of 18" in problem, problem
    for text in (node.get("/health")[1].decode(), node.get("/status")[1].decode(), node.output()):
        assert SECRET_VALUE not in text


def test_a_check_that_quotes_the_rendered_file_has_the_kv_value_taken_out_of_its_error(
    consul_agent, start_basenode, tmp_path
):
    source, dest = tmp_path / "app.j2", tmp_path / "out" / "app.conf"
    dest.parent.mkdir()
    source.write_text('password = {{ kv("app/password") }}\n')
    consul_agent.kv_put("app/password", SECRET_VALUE)
    spec = f"{source}:{dest}:sh -c 'cat {{candidate}}; exit 1'"
    node = start_basenode(f"web:{free_port()}", "--template-spec", spec)

    def template_error():
        try:
            return node.status()["templates"].get("spec1", {}).get("last_error")
        except OSError:
            return None  # not listening yet

    eventually(template_error, timeout=60, what="the check failure")
    assert "password = <kv key 'app/password'>" in template_error(), template_error()
    for text in (node.get("/health")[1].decode(), node.get("/status")[1].decode(), node.output()):
        assert SECRET_VALUE not in text


# --- 4. StrictModes: files basenode runs or renders as root -------------------------------------

PLUGIN = "def context(snapshot):\n    return {'greeting': 'hello'}\n"


def plugin_setup(tmp_path: Path) -> Tuple[Path, Path, Path]:
    """(plugins dir, template, config file): one template that uses plugin `extra`."""
    plugins, source, dest = tmp_path / "plugins", tmp_path / "t.j2", tmp_path / "out" / "t.txt"
    plugins.mkdir(mode=0o755)
    dest.parent.mkdir()
    (plugins / "extra.py").write_text(PLUGIN)
    source.write_text("{{ greeting }}\n")
    cfg = tmp_path / "basenode.toml"
    cfg.write_text(
        f'plugins_dir = "{plugins}"\n[templates.t]\nsource = "{source}"\ndestination = "{dest}"\n'
        'plugins = ["extra"]\n'
    )
    return plugins, source, cfg


@pytest.mark.parametrize(
    "target, change, expected",
    [
        ("plugins", lambda p: os.chmod(p, 0o777), "plugin's directory {path} (owner uid 0, mode 0777)"),
        ("plugin", lambda p: os.chmod(p, 0o666), "plugin {path} (owner uid 0, mode 0666)"),
        ("plugin", lambda p: os.chown(p, NOBODY.pw_uid, -1), "plugin {path} (owner uid 65534, mode 0644)"),
        ("template", lambda p: os.chmod(p, 0o664), "template {path} (owner uid 0, mode 0664)"),
        ("config", lambda p: os.chown(p, NOBODY.pw_uid, -1), "config file {path} (owner uid 65534"),
    ],
)
def test_a_plugin_template_or_config_file_others_can_write_is_refused_at_start(
    tmp_path, target, change, expected
):
    plugins, source, cfg = plugin_setup(tmp_path)
    path = {"plugins": plugins, "plugin": plugins / "extra.py", "template": source, "config": cfg}[target]
    change(path)
    marker = tmp_path / "app-ran"
    done = run_once(tmp_path / "state", "--config", str(cfg), command=("touch", str(marker)))
    assert done.returncode == 2, done.stderr
    assert expected.format(path=path) in done.stderr, done.stderr
    assert not marker.exists()


def test_haproxys_template_writable_by_others_is_refused(tmp_path):
    template = tmp_path / "haproxy.cfg.j2"
    template.write_text((ROOT / "templates" / "haproxy.cfg.j2").read_text())
    os.chmod(template, 0o646)
    done = run_once(tmp_path / "state", "--template", str(template))
    assert done.returncode == 2
    assert f"--template: template {template} (owner uid 0, mode 0646) is writable by users other" in (
        done.stderr
    ), done.stderr


def test_a_plugin_that_another_user_takes_over_while_running_is_not_run(consul_agent, tmp_path):
    plugins, _, cfg = plugin_setup(tmp_path)
    dest, pwned = tmp_path / "out" / "t.txt", tmp_path / "pwned"
    node = Node(
        run_argv(tmp_path / "state", "--config", str(cfg), command=("sleep", "100")),
        clean_env(CONSUL_HTTP_ADDR=consul_agent.http_addr),
        tmp_path / "out.log",
    )
    try:
        eventually(lambda: dest.exists() and dest.read_text() == "hello\n", timeout=60, what="first render")
        plugin = plugins / "extra.py"
        os.chown(plugin, NOBODY.pw_uid, NOBODY.pw_gid)  # say, a package that made it nobody's
        # What nobody would write (the test's tmp dir is closed to nobody: root writes it, nobody owns it).
        evil = f"import os\nopen({str(pwned)!r}, 'w').write(str(os.getuid()))\n"
        plugin.write_text(evil + PLUGIN.replace("hello", "x"))
        os.kill(node.proc.pid, signal.SIGHUP)  # look at the files now
        eventually(lambda: "refused: plugin" in node.output(), timeout=30, what="the refusal in the log")
        assert f"plugin {plugin} (owner uid {NOBODY.pw_uid}" in node.output()
        assert not pwned.exists(), "the plugin ran as root"
        assert dest.read_text() == "hello\n", "the last good file stays"
    finally:
        node.stop()


# --- 9. ~/.shiv -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda p: os.chmod(p, 0o777), "(owner uid 0, mode 0777)"),
        (lambda p: os.chown(p, NOBODY.pw_uid, -1), f"(owner uid {NOBODY.pw_uid}, mode 0700)"),
    ],
)
def test_a_shiv_dir_in_home_that_others_can_write_is_refused_before_anything_is_imported(
    tmp_path, change, expected
):
    home = tmp_path / "home"
    (home / ".shiv").mkdir(parents=True, mode=0o700)
    change(home / ".shiv")
    env = {k: v for k, v in clean_env(HOME=str(home)).items() if k != "SHIV_ROOT"}
    done = subprocess.run(
        [sys.executable, str(ZIPAPP), "version"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert f"basenode: {home / '.shiv'} is not a private directory owned by uid 0 {expected}" in done.stderr
    assert list((home / ".shiv").iterdir()) == [], "packages were unpacked into it"


# --- 10. env() reads what the operator allows; files with KV or env text are 0600 ----------------


def start_templates(consul_agent, tmp_path: Path, tables: Dict[str, str]) -> Node:
    """`basenode run` rendering [templates.NAME] tables ({name: source text}) to tmp_path/out/NAME (a
    name ending _0644 sets that mode), with APP_COLOUR=blue set and allowed to templates."""
    (tmp_path / "out").mkdir(exist_ok=True)
    text = ""
    for name, body in tables.items():
        (tmp_path / f"{name}.j2").write_text(body)
        text += f'[templates.{name}]\nsource = "{tmp_path}/{name}.j2"\n'
        text += f'destination = "{tmp_path}/out/{name}"\n' + (
            'mode = "0644"\n' if name.endswith("_0644") else ""
        )
    cfg = tmp_path / "basenode.toml"
    cfg.write_text(text)
    env = clean_env(
        CONSUL_HTTP_ADDR=consul_agent.http_addr, APP_COLOUR="blue", BASENODE_TEMPLATE_ENV="APP_COLOUR"
    )
    argv = run_argv(tmp_path / "state", "--config", str(cfg), command=("sleep", "100"))
    return Node(argv, env, tmp_path / "out.log")


def test_env_in_templates_reads_only_allowed_variables(consul_agent, tmp_path):
    tables = {"allowed": "{{ env('APP_COLOUR') }}\n", "denied": "{{ env('HOME') }}\n"}
    node = start_templates(consul_agent, tmp_path, tables)
    try:
        allowed = tmp_path / "out" / "allowed"
        eventually(lambda: allowed.exists(), timeout=60, what="the allowed template written")
        assert allowed.read_text() == "blue\n"
        eventually(lambda: "env('HOME'): not in template_env" in node.output(), timeout=30, what="refusal")
        assert not (tmp_path / "out" / "denied").exists()
    finally:
        node.stop()


def test_destinations_that_get_kv_or_env_text_are_0600_unless_mode_says(consul_agent, tmp_path):
    consul_agent.kv_put("app/db", "postgres://u:p@db/x")
    tables = {
        "plain": "no values here\n",
        "kv": "{{ kv('app/db') }}\n",
        "tree": "{% for k, v in kv_tree('app') | dictsort %}{{ v }}{% endfor %}\n",
        "env": "{{ env('APP_COLOUR') }}\n",
        "kv_0644": "{{ kv('app/db') }}\n",
    }
    node = start_templates(consul_agent, tmp_path, tables)
    try:
        out = tmp_path / "out"
        eventually(lambda: all((out / n).exists() for n in tables), timeout=60, what="every template written")
        modes = {n: stat.S_IMODE(os.stat(out / n).st_mode) for n in tables}
        assert modes == {"plain": 0o644, "kv": 0o600, "tree": 0o600, "env": 0o600, "kv_0644": 0o644}
    finally:
        node.stop()


# --- 11. an open cluster is said so, once ----------------------------------------------------------


def test_joining_a_cluster_without_a_gossip_key_or_acls_logs_one_warning_saying_what_is_open(
    consul_agent, start_basenode
):
    node = start_basenode(f"web:{free_port()}", own_agent=True)  # joins the test's agent: no key, no ACLs
    eventually(lambda: "gossip is not encrypted" in node.output(), timeout=90, what="the warning")
    eventually(node.healthy, timeout=60, what="/health 200")
    out = node.output()
    assert out.count("gossip is not encrypted (no CONSUL_ENCRYPT) and the agent has no ACLs") == 1, out
    assert "can join as a node and register services" in out and "can write basenode/routes/ keys" in out


def test_a_single_agent_on_loopback_gets_no_such_warning(consul_agent, start_basenode):
    node = start_basenode(f"web:{free_port()}")  # the test's agent: one node, bound to 127.0.0.1
    eventually(node.healthy, timeout=60, what="/health 200")
    assert "gossip is not encrypted" not in node.output() and "has no ACLs" not in node.output()


def test_haproxys_check_quoting_a_kv_value_has_it_taken_out(consul_agent, start_basenode, tmp_path):
    template = tmp_path / "haproxy.cfg.j2"
    template.write_text(
        (ROOT / "templates" / "haproxy.cfg.j2").read_text()
        + f"\nfrontend probe\n  bind 127.0.0.1:{free_port()}\n"
        + '{% if kv("app/backend", "") %}  use_backend {{ kv("app/backend") }}\n{% endif %}'
    )
    consul_agent.kv_put("app/backend", SECRET_VALUE)
    node = start_basenode(f"web:{free_port()}", "--template", str(template))
    eventually(lambda: node.problems("check: "), timeout=60, what="haproxy -c's refusal in /health")
    problem = node.problems("check: ")[0]
    assert "use_backend: '<kv key 'app/backend'>'" in problem, problem
    for text in (node.get("/health")[1].decode(), node.get("/status")[1].decode(), node.output()):
        assert SECRET_VALUE not in text
