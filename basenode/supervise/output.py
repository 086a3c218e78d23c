"""Children's output multiplexed onto basenode's stdout and stderr: `NAME | line` or a JSON log
object per line, over-long lines split, a partial last line flushed at EOF (see the package
docstring)."""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import time
from typing import List, Sequence, Set, Tuple

from ..log import iso_time

log = logging.getLogger(__package__)  # one component, "supervise", for the whole supervisor

MAX_LINE = 64 * 1024  # longer lines are split: memory per stream stays bounded
READ_SIZE = 64 * 1024
DRAIN_READS = 16  # reads of a dead program's pipes before its exit is logged


def _cut(data: bytes, limit: int) -> int:
    """Where to split an over-long line: at `limit`, moved back (at most 3 bytes) so that a UTF-8
    character is not cut in two. Binary data without such a boundary is cut at `limit`."""
    if len(data) <= limit:
        return len(data)
    cut = limit
    while cut > limit - 3 and cut > 1 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut if (data[cut] & 0xC0) != 0x80 else limit


def split_lines(pending: bytes, data: bytes, limit: int = MAX_LINE) -> Tuple[List[bytes], bytes]:
    """Whole lines (without their newline) out of pending + data, and what remains of a partial
    line. No line and no remainder is ever longer than `limit`: longer ones are split."""
    lines = (pending + data).split(b"\n")
    rest = lines.pop()
    out: List[bytes] = []
    for line in lines:
        while len(line) > limit:
            cut = _cut(line, limit)
            out.append(line[:cut])
            line = line[cut:]
        out.append(line)
    while len(rest) > limit:
        cut = _cut(rest, limit)
        out.append(rest[:cut])
        rest = rest[cut:]
    return out, rest


def json_line(program: str, stream: str, line: bytes) -> bytes:
    """A child's output line as one JSON log object (--log-format json), named after its program.

    A line that already is one of basenode's JSON log objects (the sync and register children log
    in the same format) keeps its own fields and gains the program's name.
    """
    text = line.decode("utf-8", "replace")
    entry = None
    if text.startswith("{"):
        try:
            entry = json.loads(text)
        except ValueError:
            entry = None
    if isinstance(entry, dict) and "component" in entry and "message" in entry:
        fields = entry.get("fields") if isinstance(entry.get("fields"), dict) else {}
        entry["fields"] = {**fields, "program": program}
    else:
        entry = {
            "time": iso_time(time.time()),
            "level": "info",
            "component": program,
            "message": text,
            "fields": {"program": program, "stream": stream},
        }
    return (json.dumps(entry, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


class Stream:
    """One pipe from a child: stdout or stderr of one run of a program."""

    __slots__ = ("as_json", "fd", "name", "out", "pending", "prefix")

    def __init__(self, fd: int, out: int, name: str, as_json: bool = False) -> None:
        self.fd = fd
        self.out = out
        self.name = name
        self.as_json = as_json
        self.prefix = f"{name} | ".encode()
        self.pending = b""

    def format(self, lines: Sequence[bytes]) -> bytes:
        if not self.as_json:
            return b"".join(self.prefix + line + b"\n" for line in lines)
        stream = "stdout" if self.out == 1 else "stderr"
        return b"".join(json_line(self.name, stream, line) for line in lines)


class Output:
    """basenode's stdout/stderr, written with raw writes. A closed one is dropped, never fatal."""

    def __init__(self) -> None:
        self.dead: Set[int] = set()

    def write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view and fd not in self.dead:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                # Someone left our stdout non-blocking: wait until it drains (backpressure, no spin).
                _wait_writable(fd)
            except OSError as e:
                self.dead.add(fd)
                if e.errno not in (errno.EPIPE, errno.EBADF):
                    log.warning("cannot write to fd %d: %s; dropping its output", fd, e)


def _wait_writable(fd: int) -> None:
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_WRITE)
        sel.select()


class Mux:
    """The children's pipes in the loop's selector (each registered with its Stream as data)."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        self._out = Output()

    def add(self, fd: int, out: int, name: str, as_json: bool) -> Stream:
        os.set_blocking(fd, False)
        stream = Stream(fd, out, name, as_json)
        self._selector.register(fd, selectors.EVENT_READ, stream)
        return stream

    def read(self, s: Stream) -> bool:
        """One read from a child's pipe; False when there is nothing (more) to read right now."""
        try:
            data = os.read(s.fd, READ_SIZE)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self.close(s)
            return False
        lines, s.pending = split_lines(s.pending, data)
        if lines:
            self._out.write(s.out, s.format(lines))
        return True

    def drain(self, s: Stream) -> None:
        for _ in range(DRAIN_READS):
            if s.fd < 0 or not self.read(s):
                return

    def close(self, s: Stream) -> None:
        if s.fd < 0:
            return
        if s.pending:
            self._out.write(s.out, s.format([s.pending]))
            s.pending = b""
        self._selector.unregister(s.fd)
        os.close(s.fd)
        s.fd = -1

    def close_all(self) -> None:
        for key in list(self._selector.get_map().values()):
            if isinstance(key.data, Stream):
                self.drain(key.data)
                self.close(key.data)
