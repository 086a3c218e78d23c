"""What can go wrong applying a config to HAProxy; every module of the package raises these."""

from __future__ import annotations


class CheckFailed(Exception):
    """`haproxy -c` rejected a config; str() is HAProxy's own message."""


class ApplyError(Exception):
    """The config was checked and written but could not be made to run (the reload failed)."""


class RuntimeAPIError(ApplyError):
    """The runtime API or master CLI refused a command or could not be reached."""


class UnsafeCommand(RuntimeAPIError):
    """A word meant for the admin socket holds a character that socket would read as syntax (`;`
    separates commands, a backslash escapes, a control character ends the line): nothing was sent."""


class NeedReload(Exception):
    """The change cannot be made through the runtime API; apply checks and reloads instead."""
