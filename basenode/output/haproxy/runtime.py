"""HAProxy's runtime API (the stats socket) and master CLI: one command per connection, and what
their answers say.

Both are unix sockets in the state dir (mode 0600). Each parser here takes an answer as text, so
that answers recorded from HAProxy 2.6 and 3.x are tested without a running HAProxy.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .errors import RuntimeAPIError, UnsafeCommand

SOCKET_TIMEOUT = 5.0
# srv_admin_state bits (management guide, "show servers state").
ADMIN_FMAINT = 0x01  # forced into maintenance from the CLI
ADMIN_CMAINT = 0x04  # "disabled" in the config
ADMIN_FDRAIN = 0x08
ADMIN_RMAINT = 0x20  # no address (resolution failed)

Version = Tuple[int, int]  # (major, minor); (0, 0) when unknown: 2.6's behaviour is assumed


# What the admin socket reads as syntax, never as part of a word: `;` separates commands, a backslash
# escapes, a newline ends the command, blanks split words; other control characters have no business
# in a command either. A value holding one could smuggle in a second command, e.g. a weight of
# "1;shutdown sessions server web/b".
_SYNTAX = re.compile(r"[;\\\x00-\x08\x0a-\x1f\x7f]")
_BLANK = re.compile(r"[ \t]")


def syntax_in(text: str) -> str:
    """What in `text` (words separated by blanks) the admin socket would read as syntax, or ""."""
    found = _SYNTAX.search(text)
    if found is None:
        return ""
    char = found.group()
    if char == ";":
        return "a ';' (the admin socket's command separator)"
    if char == "\\":
        return "a backslash (the admin socket's escape)"
    return f"the control character {ord(char):#04x}"


def unsafe(word: str) -> str:
    """What keeps `word` from going to the admin socket as one word, or ""."""
    if not word:
        return "nothing (an empty word)"
    if _BLANK.search(word):
        return "a blank (it would split the word in two)"
    return syntax_in(word)


def check_words(words: Sequence[str]) -> None:
    """UnsafeCommand unless every word can go to the admin socket as one word of one command.
    The message names the command and the word's position, never the value."""
    if not words:
        raise UnsafeCommand("refused to send an empty command")
    for position, word in enumerate(words, 1):
        problem = unsafe(word)
        if problem:
            name = " ".join(w for w in words[:2] if not unsafe(w))
            raise UnsafeCommand(f"refused to send `{name} ...`: word {position} holds {problem}")


def command(
    socket_path: Path, words: Sequence[str], timeout: float = SOCKET_TIMEOUT, keep_input_open: bool = False
) -> str:
    """Send one command, return HAProxy's whole answer. UnsafeCommand (nothing sent) when a word holds
    what the socket would read as syntax; RuntimeAPIError if the socket does not answer.

    `keep_input_open` for `wait`, which HAProxy interrupts as soon as our side ends its input; in
    non-interactive mode HAProxy closes the connection after the one command either way.
    """
    check_words(words)
    line = " ".join(words)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            sock.sendall(line.encode() + b"\n")
            if not keep_input_open:
                sock.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
    except OSError as e:
        raise RuntimeAPIError(f"{socket_path}: {words[0] if words else ''}: {e}") from None
    return b"".join(chunks).decode("utf-8", "replace")


@dataclass(frozen=True)
class ServerState:
    backend: str
    name: str
    address: str  # "-" when it has none
    port: int
    op_state: int  # 0 down, 1 starting, 2 running, 3 stopping
    admin_state: int  # ADMIN_* bits
    weight: int  # user-visible weight

    @property
    def in_maintenance(self) -> bool:
        return bool(self.admin_state & ADMIN_FMAINT)

    @property
    def ready(self) -> bool:
        """Not held out by an operator (our maint/drain) or by the config."""
        return not self.admin_state & (ADMIN_FMAINT | ADMIN_FDRAIN | ADMIN_CMAINT)


ServersState = Dict[str, Dict[str, ServerState]]  # backend -> server name -> state


def show_servers_state(socket_path: Path, backend: Optional[str] = None) -> ServersState:
    """backend -> server name -> state, from `show servers state` (format version 1)."""
    words = ("show", "servers", "state", backend) if backend else ("show", "servers", "state")
    return parse_servers_state(command(socket_path, words))


def show_backends(socket_path: Path) -> List[str]:
    """The backends (and listen sections) the worker runs, from `show backend`."""
    answer = command(socket_path, ("show", "backend"))
    return [line.strip() for line in answer.splitlines() if line.strip() and not line.startswith("#")]


def parse_servers_state(answer: str) -> ServersState:
    lines = answer.splitlines()
    if not lines or lines[0].strip() != "1":
        raise RuntimeAPIError(f"show servers state: unexpected answer {answer[:200]!r}")
    columns: List[str] = []
    result: ServersState = {}
    for line in lines[1:]:
        if line.startswith("#"):
            columns = line[1:].split()
            continue
        if not line.strip():
            continue
        row = dict(zip(columns, line.split()))
        try:
            state = ServerState(
                backend=row["be_name"],
                name=row["srv_name"],
                address=row["srv_addr"],
                port=int(row["srv_port"]),
                op_state=int(row["srv_op_state"]),
                admin_state=int(row["srv_admin_state"]),
                weight=int(row["srv_uweight"]),
            )
        except (KeyError, ValueError):
            raise RuntimeAPIError(f"show servers state: cannot parse {line!r}") from None
        result.setdefault(state.backend, {})[state.name] = state
    return result


def show_info(socket_path: Path) -> Dict[str, str]:
    info = {}
    for line in command(socket_path, ("show", "info")).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def stats_pid(socket_path: Path) -> Optional[int]:
    """The pid of the worker answering on the stats socket; None when none answers."""
    try:
        return int(show_info(socket_path).get("Pid", "0"))
    except (RuntimeAPIError, ValueError):
        return None


@dataclass(frozen=True)
class ProcInfo:
    """The master CLI's `show proc`."""

    master_pid: int
    reloads: int
    failed_reloads: int
    workers: Tuple[int, ...]  # current workers
    old_workers: Tuple[int, ...]  # workers of earlier configs still finishing their sessions


def show_proc(master_socket: Path, timeout: float = SOCKET_TIMEOUT) -> ProcInfo:
    return parse_proc(command(master_socket, ("show", "proc"), timeout=timeout))


def parse_proc(answer: str) -> ProcInfo:
    master_pid = reloads = failed = None
    workers: List[int] = []
    old: List[int] = []
    section = "master"
    for line in answer.splitlines():
        text = line.strip()
        if text.startswith("#"):
            name = text.lstrip("#").strip()
            section = {"workers": "workers", "old workers": "old", "programs": "programs"}.get(name, section)
            continue
        parts = text.split()
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        if parts[1] == "master":
            master_pid, reloads = int(parts[0]), int(parts[2])
            m = re.search(r"failed:\s*(\d+)", text)
            failed = int(m.group(1)) if m else 0
        elif parts[1] == "worker":
            (workers if section == "workers" else old).append(int(parts[0]))
    if master_pid is None or reloads is None or failed is None:
        raise RuntimeAPIError(f"show proc: unexpected answer {answer[:200]!r}")
    return ProcInfo(master_pid, reloads, failed, tuple(workers), tuple(old))


def parse_version(text: str) -> Version:
    """(major, minor) from `haproxy -v` ("HAProxy version 3.0.5-1 ...", older "HA-Proxy version ...") or
    `show info` ("Version: 2.6.12-1+deb12u4"); (0, 0) when the text holds none."""
    m = re.search(r"\bversion:?\s+(\d+)\.(\d+)", text, re.IGNORECASE)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


@dataclass(frozen=True)
class ReloadStatus:
    """The master CLI's answer to `reload` on HAProxy >= 2.7: "Success=1" or "Success=0", then
    (after a "--" line, when HAProxy keeps its startup logs) what the new process printed."""

    success: bool
    log: str


def parse_reload(answer: str) -> Optional[ReloadStatus]:
    """None when the answer carries no status (2.6 closes the connection without one)."""
    head, _, log = answer.partition("\n--\n")
    for line in head.splitlines():
        text = line.strip()
        if text in ("Success=1", "Success=0"):
            return ReloadStatus(text == "Success=1", log)
    return None
