"""Data plugins (docker-basenode's extension point): `<plugins_dir>/<name>.py`, `context(snapshot) -> dict`.

A plugin's keys are added to the context of the templates that name it (`plugins = ["name"]`). It is
the operator's own Python, run in the sync process (not sandboxed, as pyconfd's plugins were not); what
it returns reaches the template through the sandbox like every other value. `snapshot` is the discovery
snapshot (snapshot.Snapshot: routes with their healthy, validated instances).

A plugin is loaded when first needed and again whenever its file changes. One that fails to load,
raises, returns something other than a dict with text keys, or would hide a template function, raises
PluginError naming its file and line: the templates that name it are not rendered that round and
their last good output stays.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Collection, Dict, Optional, Tuple

from .. import trust
from ..snapshot import Snapshot


class PluginError(Exception):
    """str() is `file:line: message`, as the operator needs it to find the fault."""

    def __init__(self, file: str, line: Optional[int], message: str) -> None:
        self.file = file
        self.line = line
        self.message = message
        super().__init__(f"{file}:{line}: {message}" if line else f"{file}: {message}")


class Plugins:
    """The plugins of one plugins dir, each compiled once per version of its file."""

    def __init__(self, directory: Path, reserved: Collection[str] = ()) -> None:
        self.directory = Path(directory)
        self.reserved = frozenset(reserved)  # names a plugin may not set (the template functions)
        self._loaded: Dict[str, Tuple[Tuple[int, int, int], ModuleType]] = {}

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.py"

    def stamp(self, name: str) -> Optional[Tuple[int, int, int]]:
        try:
            st = self.path(name).stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def context(self, name: str, snapshot: Snapshot) -> Dict[str, Any]:
        """The plugin's keys for one render; PluginError (file:line) if it cannot give them."""
        module = self._module(name)
        path = str(self.path(name))
        function = getattr(module, "context", None)
        if not callable(function):
            raise PluginError(path, None, "defines no context(snapshot) function")
        try:
            values = function(snapshot)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # sys.exit() in a plugin included: it must not end the sync loop
            raise PluginError(path, _line_in(e, path), f"context() raised {type(e).__name__}: {e}") from None
        line = getattr(getattr(function, "__code__", None), "co_firstlineno", None)
        if not isinstance(values, dict):
            raise PluginError(path, line, f"context() returned {type(values).__name__}, not a dict")
        for key in values:
            if not isinstance(key, str) or not key.isidentifier():
                raise PluginError(path, line, f"context() returned the key {key!r}, not a name")
            if key in self.reserved:
                raise PluginError(path, line, f"context() returned {key!r}: a template function's name")
        return values

    def _module(self, name: str) -> ModuleType:
        stamp = self.stamp(name)
        loaded = self._loaded.get(name)
        if loaded is not None and loaded[0] == stamp:
            return loaded[1]
        path = self.path(name)
        if stamp is None:
            raise PluginError(str(path), None, "plugin file not found")
        # Compiled from the source every time the file changes: an import would reuse a __pycache__
        # entry keyed on whole seconds and the size, and miss a quick edit of the same length.
        module = ModuleType(f"basenode_plugin_{name}")
        module.__file__ = str(path)
        try:
            source = trust.read_trusted(path, "plugin")  # run as basenode's user: root, often
        except trust.UntrustedPath as e:
            raise PluginError(str(path), None, f"refused: {e}") from None
        except OSError as e:
            raise PluginError(str(path), None, f"cannot read: {e.strerror}") from None
        try:
            code = compile(source, str(path), "exec")
            exec(code, module.__dict__)
        except SyntaxError as e:
            raise PluginError(str(path), e.lineno, f"SyntaxError: {e.msg}") from None
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # sys.exit() at a plugin's top level included
            message = f"loading raised {type(e).__name__}: {e}"
            raise PluginError(str(path), _line_in(e, str(path)), message) from None
        self._loaded[name] = (stamp, module)
        return module


def _line_in(error: BaseException, path: str) -> Optional[int]:
    """The line of the innermost traceback frame in the plugin's own file."""
    line = None
    tb = error.__traceback__ or sys.exc_info()[2]
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
