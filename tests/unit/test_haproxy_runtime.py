"""What the runtime API's and master CLI's answers say, read from answers recorded from HAProxy:
2.6 from Debian bookworm's 2.6.12 on this machine, 2.7+ and 3.x from HAProxy's management guide and
source (doc/management.txt, src/mworker.c)."""

from __future__ import annotations

import pytest

from basenode.output.haproxy.errors import UnsafeCommand
from basenode.output.haproxy.program import alerts
from basenode.output.haproxy.runtime import (
    check_words,
    command,
    parse_proc,
    parse_reload,
    parse_servers_state,
    parse_version,
)

SHOW_PROC_2_6 = (
    "#<PID>          <type>          <reloads>       <uptime>        <version>      \n"
    "11522           master          1 [failed: 0]   0d00h00m05s     2.6.12-1+deb12u4\n"
    "# workers\n"
    "12440           worker          0               0d00h00m01s     2.6.12-1+deb12u4\n"
    "# old workers\n"
    "11560           worker          1               0d00h00m06s     2.6.12-1+deb12u4\n"
    "# programs\n\n"
)
SHOW_PROC_3_0 = (
    "#<PID>          <type>          <reloads>       <uptime>        <version>      \n"
    "1162            master          5 [failed: 2]   0d00h02m07s     3.0.11-1       \n"
    "# workers\n"
    "1271            worker          1               0d00h00m00s     3.0.11-1       \n"
    "# old workers\n"
    "1233            worker          3               0d00h00m43s     3.0.11-1       \n"
    "# programs\n"
    "1244            foo             0               0d00h00m00s     -              \n"
)
SERVERS_STATE_2_6 = (
    "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight "
    "srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state "
    "srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port "
    "srv_check_addr srv_agent_addr srv_agent_port\n"
    "2 web 1 s1 127.0.0.1 0 1 3 1 1 1 0 0 0 0 0 0 - 8081 - 0 0 - - 0\n\n"
)
RELOAD_OK = (
    "Success=1\n--\n"
    "[NOTICE]   (482713) : haproxy version is 3.0.11-1\n"
    "[NOTICE]   (482713) : path to executable is /usr/sbin/haproxy\n"
    "[NOTICE]   (482713) : New worker (482720) forked\n"
    "[NOTICE]   (482713) : Loading success.\n"
)
RELOAD_FAILED = (
    "Success=0\n--\n"
    "[NOTICE]   (482886) : haproxy version is 3.0.11-1\n"
    "[ALERT]    (482886) : Binding [/run/basenode/haproxy.cfg:40] for frontend clash: cannot bind socket "
    "(Address already in use) for [127.0.0.1:9400]\n"
    "[WARNING]  (482886) : Loading failure!\n"
)


def test_show_proc_reads_the_same_in_2_6_and_3_0():
    six = parse_proc(SHOW_PROC_2_6)
    assert (six.master_pid, six.reloads, six.failed_reloads) == (11522, 1, 0)
    assert (six.workers, six.old_workers) == ((12440,), (11560,))
    three = parse_proc(SHOW_PROC_3_0)
    assert (three.master_pid, three.reloads, three.failed_reloads) == (1162, 5, 2)
    assert (three.workers, three.old_workers) == ((1271,), (1233,))  # a program is no worker


def test_show_servers_state_gives_address_port_weight_and_admin_state():
    state = parse_servers_state(SERVERS_STATE_2_6)["web"]["s1"]
    assert (state.address, state.port, state.weight, state.admin_state) == ("127.0.0.1", 8081, 3, 1)
    assert state.in_maintenance and not state.ready


def test_the_version_comes_from_haproxy_v_or_show_info():
    assert parse_version("HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/\n") == (2, 6)
    assert parse_version("HAProxy version 3.0.11-1 2025/06/04 - https://haproxy.org/\nStatus: LTS") == (3, 0)
    assert parse_version("HA-Proxy version 2.0.33 2023/08/19 - https://haproxy.org/") == (2, 0)
    assert parse_version("Name: HAProxy\nVersion: 3.3.0-1\nRelease_date: 2025/11/26\n") == (3, 3)
    assert parse_version("sh: haproxy: not found") == (0, 0)


def test_the_reload_answer_of_2_7_and_later_says_whether_it_worked_and_why_not():
    ok = parse_reload(RELOAD_OK)
    assert ok is not None and ok.success
    failed = parse_reload(RELOAD_FAILED)
    assert failed is not None and not failed.success
    assert alerts(failed.log) == (
        "Binding [/run/basenode/haproxy.cfg:40] for frontend clash: cannot bind socket "
        "(Address already in use) for [127.0.0.1:9400]"
    )
    bare = parse_reload("Success=1\n")  # HAProxy built without USE_SHM_OPEN keeps no startup logs
    assert bare is not None and bare.success and bare.log == ""
    assert parse_reload("") is None  # 2.6: the master closes the connection without an answer


def test_a_word_the_admin_socket_would_read_as_syntax_is_refused_before_anything_is_sent():
    check_words(("add", "server", "web/n1_a", "10.0.0.5:8080", "weight", "1", "maxconn", "10"))
    for word in (
        "1;shutdown",
        "a\\b",
        "two words",
        "tab\there",
        "line\nbreak",
        "cr\r",
        "nul\x00",
        "del\x7f",
        "",
    ):
        with pytest.raises(UnsafeCommand) as refused:
            check_words(("set", "weight", "web/n1_a", word))
        assert "word 4 holds" in str(refused.value)
        assert word not in str(refused.value) or not word  # the value is never echoed
    with pytest.raises(UnsafeCommand):
        check_words(())


def test_command_refuses_an_unsafe_word_without_connecting(tmp_path):
    with pytest.raises(UnsafeCommand, match="';'"):
        command(tmp_path / "no-such.sock", ("set", "weight", "web/n1_a", "1;disable", "server", "web/n1_b"))
