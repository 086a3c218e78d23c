"""The watch: what renders depend on, followed by blocking queries on one event loop.

view.py is one dependency's blocking loop, watcher.py the set of them within a connection budget,
catalog.py the fallback past the budget, debounce.py the leading-edge debounce.
"""

from .debounce import Debouncer
from .view import SourceStatus, WarnOnce
from .watcher import Watcher

__all__ = ["Debouncer", "SourceStatus", "WarnOnce", "Watcher"]
