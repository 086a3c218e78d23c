"""HAProxy as basenode's output: a rendered config checked, written atomically and applied through
the runtime API or a seamless reload.

parse    a config -> its skeleton and its backends' server lines
plan     old parse + new parse + running state -> the runtime commands (pure)
runtime  the stats socket and master CLI, and what their answers say
apply    runs the plan, verifies, falls back to check + reload
baseline what HAProxy may run after files were written while it did not answer
program  the command line, `haproxy -c`, and the lifecycle (running, reload)
"""

from __future__ import annotations

from .apply import ApplyResult, apply
from .baseline import LIVE, SERVERS, UNKNOWN, Baseline
from .errors import ApplyError, CheckFailed, RuntimeAPIError
from .parse import ParsedConfig, ServerLine, parse_config
from .program import check, program, reload, running
from .runtime import ProcInfo, ServerState, show_info, show_proc, show_servers_state, stats_pid

__all__ = [
    "LIVE",
    "SERVERS",
    "UNKNOWN",
    "ApplyError",
    "ApplyResult",
    "Baseline",
    "CheckFailed",
    "ParsedConfig",
    "ProcInfo",
    "RuntimeAPIError",
    "ServerLine",
    "ServerState",
    "apply",
    "check",
    "parse_config",
    "program",
    "reload",
    "running",
    "show_info",
    "show_proc",
    "show_servers_state",
    "stats_pid",
]
