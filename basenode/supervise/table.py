"""The programs' records, and what the parts of the supervisor share about them while it runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

from .. import config, terminal
from .process import REMOVED, Proc, ProgramState

if TYPE_CHECKING:
    from .output import Mux
    from .stop import OrderedStop


class Table:
    """Mutable, touched by the loop's thread only. `dirty`: a state changed since the last
    snapshot was published."""

    def __init__(
        self,
        programs: Sequence[config.Program],
        json_output: bool = False,
        on_started: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.procs: Dict[str, Proc] = {}
        for program in programs:
            if program.name in self.procs:
                raise ValueError(f"program {program.name!r} defined twice")
            self.procs[program.name] = Proc(program)
        self.json_output = json_output  # children's lines as JSON log objects, unless their output says
        self.on_started = on_started
        self.by_pid: Dict[int, Proc] = {}
        self.start_order: List[Proc] = []
        self.stop: Optional[OrderedStop] = None  # basenode's own stop, once it began
        self.stop_signal: Optional[int] = None  # the signal that began it
        self.main_status: Optional[int] = None
        self.fatal = False  # a required or the main program went FATAL
        self.dirty = False
        self.mux: Optional[Mux] = None  # children's pipes, while the loop runs
        self.terminal: Optional[terminal.Terminal] = None  # basenode's stdin, while the app may hold it
        self.tracked: Dict[int, Callable[[int], None]] = {}  # readiness commands' pids -> on exit

    @property
    def stopping(self) -> bool:
        return self.stop is not None

    def set(self, p: Proc, state: str) -> None:
        p.state = state
        self.dirty = True

    def forget(self, p: Proc) -> None:
        """A removed program is gone: no record, no place in the stop order."""
        del self.procs[p.program.name]
        if p in self.start_order:
            self.start_order.remove(p)
        self.dirty = True

    def find(self, name: str) -> Proc:
        """The program named `name` in the config; ValueError when there is none."""
        p = self.procs.get(name)
        if p is None or p.state in REMOVED:
            raise ValueError(f"no program {name!r}")
        return p

    def running(self, name: str) -> Proc:
        p = self.find(name)
        if p.pid is None:
            raise ValueError(f"program {name!r} is not running ({p.view().state})")
        return p

    def views(self) -> Tuple[ProgramState, ...]:
        return tuple(p.view() for p in self.procs.values())

    def track(self, pid: int, on_exit: Callable[[int], None]) -> None:
        """A readiness command's child: the loop reaps it and hands its status to `on_exit`."""
        self.tracked[pid] = on_exit
