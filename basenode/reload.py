"""SIGHUP in `basenode run`: the config read again, and what the change means for the running programs.

The supervisor applies the new program list itself (new ones start, removed ones stop, changed ones
restart). Beyond that list, three things follow from the settings, decided by `plan`: the Consul
agent restarts when its settings changed (its config file is written anew, so the definition
alone does not show it); the sync loop restarts when anything changed (it reads the config file
itself), else gets SIGHUP to look at its templates now; and a sync loop that (re)starts has its
ready file removed first, so that what waits for it waits for its new first renders.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from typing import List, Optional, Protocol, Sequence

from . import config, topology

logger = logging.getLogger(__name__)


class Programs(Protocol):
    """What a reload asks of the supervisor (supervise.Supervisor)."""

    def restart_program(self, name: str) -> None: ...

    def signal_program(self, name: str, sig: int, if_running: bool = False) -> bool: ...


@dataclass(frozen=True)
class Plan:
    """What a reload does from `old` to `new` settings, beyond replacing the program list."""

    restart_consul: bool = False
    forget_sync_ready: bool = False  # the sync loop (re)starts: its first renders are to come again
    restart_sync: bool = False
    hup_sync: bool = False


def plan(old: config.Settings, new: config.Settings) -> Plan:
    both_sync = new.run_sync and old.run_sync
    return Plan(
        restart_consul=new.agent != old.agent and new.run_consul and old.run_consul,
        forget_sync_ready=new.run_sync and (new != old or not old.run_sync),
        restart_sync=both_sync and new != old,
        hup_sync=both_sync and new == old,
    )


class Reload:
    """SIGHUP's handler: `apply` returns the new program list, or None (the running config stays)
    when the config is refused."""

    def __init__(self, settings: config.Settings, flags: config.Flags, child_options: Sequence[str]):
        self.settings = settings
        self._flags = flags
        self._child_options = tuple(child_options)

    def apply(self, programs: Programs) -> Optional[List[config.Program]]:
        old = self.settings
        try:
            new = config.load(self._flags, os.environ)
            wanted = topology.all_programs(new, self._child_options, first_start=False)
        except config.ConfigError as e:
            logger.error("reload refused, the running config stays: %s", e)
            return None
        logger.info("SIGHUP: config reloaded from %s", new.config_file or "flags and environment")
        self.settings = new
        todo = plan(old, new)
        if todo.restart_consul:
            programs.restart_program("consul")
        if todo.forget_sync_ready:
            with contextlib.suppress(FileNotFoundError):
                new.sync_ready_file.unlink()
        # Not running just now (ValueError): it reads its config and templates when it starts.
        with contextlib.suppress(ValueError):
            if todo.restart_sync:
                programs.restart_program("sync")
            elif todo.hup_sync:
                programs.signal_program("sync", signal.SIGHUP)
        return wanted
