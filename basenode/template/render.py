"""Render: a validated Snapshot -> HAProxy config text, through a sandboxed Jinja2 template.

The template sees only plain data built here from a `snapshot.Snapshot` (whose values were all
validated against Consul's anything-goes registrations) and a small subset of the settings: no
tokens, no keys, no objects with methods worth calling. The environment is sandboxed (a user
template cannot reach Python internals), undefined names are errors (a typo must fail `check`,
not render an empty string into the config), and nothing is HTML-escaped. Block tags eat their
own line (trim_blocks, lstrip_blocks), and a final newline is kept.

The context it gives HAProxy's template (`context()`) is described, name for name, in
docs/templates.md; a unit test keeps the two equal.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import sys
from operator import is_
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .. import trust
from ..config import Settings
from ..snapshot import Instance, RouteState, Snapshot

log = logging.getLogger(__name__)
TEMPLATE_NAME = "haproxy.cfg.j2"


class RenderError(Exception):
    """A template that cannot be loaded or rendered; str() is `file:line: message`."""

    def __init__(self, file: str, line: Optional[int], message: str) -> None:
        self.file = file
        self.line = line
        self.message = message
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {message}")


def default_template() -> Path:
    """The bundled template: inside the package in the zipapp, at the repository root in a checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "templates" / TEMPLATE_NAME, package.parent / "templates" / TEMPLATE_NAME):
        if candidate.is_file():
            return candidate
    return package.parent / "templates" / TEMPLATE_NAME


# A value printed into HAProxy's config must stay on its line: a newline (or any control character
# but tab) from a KV value or an env() variable would start a directive the template never wrote.
LINE_BREAKING_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\u2028\u2029\x85]")


class RenderedPart(str):
    """A route's part, already rendered with the single-line rule: printed as it is, newlines and all."""


class Sourced(str):
    """Text from Consul KV or the environment that knows where it came from (`source`, e.g. "kv key
    'app/db'"): an error about it names that, never the text, which may be a secret."""

    source: str

    def __new__(cls, text: str, source: str) -> Sourced:
        made = super().__new__(cls, text)
        made.source = source
        return made


def describe_breaking(value: str) -> str:
    """What is wrong with a value LINE_BREAKING_RE finds in, without any of its text."""
    m = LINE_BREAKING_RE.search(value)
    assert m is not None
    char = m.group(0)
    kind = "line break" if char in "\n\r\x0b\x0c\x85\u2028\u2029" else "control character"
    return f"{kind} U+{ord(char):04X} at character {m.start() + 1} of {len(value)}"


def _single_line(value: Any) -> Any:
    if isinstance(value, RenderedPart):
        return value
    if isinstance(value, str) and LINE_BREAKING_RE.search(value):
        source = getattr(value, "source", None)
        what = f"the value of {source}" if source else "a value"
        raise ValueError(
            f"{what} holds a line break or control character ({describe_breaking(value)}): "
            "it cannot be printed here"
        )
    return value


def _environment(directory: Path, single_line: bool = False) -> jinja2.Environment:
    # Immutable sandbox: templates may not call methods that mutate lists or dicts either.
    return ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(directory)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_single_line if single_line else None,
    )


def load_template(path: Path, single_line: bool = False) -> jinja2.Template:
    """Compile the template at `path`; RenderError naming file:line on a syntax error.

    `single_line`: every `{{ value }}` must print without line breaks or control characters (HAProxy's
    config, where one line is one directive); breaking the rule fails the render, naming the line."""
    path = Path(path).absolute()
    try:  # HAProxy's master runs as root, and its config can start programs: nobody else writes it
        if path.exists():
            trust.check_trusted_file(path, "template")
    except trust.UntrustedPath as e:
        raise RenderError(str(path), None, f"refused: {e}") from None
    env = _environment(path.parent, single_line)
    try:
        return env.get_template(path.name)
    except jinja2.TemplateNotFound:
        raise RenderError(str(path), None, "template file not found") from None
    except jinja2.TemplateSyntaxError as e:
        raise RenderError(e.filename or str(path), e.lineno, e.message or "syntax error") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RenderError(str(path), None, f"cannot read template: {e}") from None


class TemplateSource:
    """A template file and its compiled form; compiled again when the file changes on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stamp: Optional[tuple] = None
        self.template: Any = None

    def file_stamp(self) -> Optional[tuple]:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def changed(self) -> bool:
        """The file differs from the compiled version (or none is compiled yet)."""
        return self.template is None or self.file_stamp() != self.stamp

    def refresh(self) -> bool:
        """Recompile if the file changed; True when a new good template took over. RenderError if bad."""
        stamp = self.file_stamp()
        if stamp == self.stamp and self.template is not None:
            return False
        template = load_template(self.path, single_line=True)  # RenderError: the old one stays
        self.template, self.stamp = template, stamp
        return True


class RouteParts:
    """`{% call route_part(route) %}...{% endcall %}` for HAProxy's template: the block's text for one
    route, rendered again only when that route changed.

    A whole render costs in proportion to the number of routes, however small the change; with
    parts the cost follows the change. A part's key is everything the block may use: the RouteState
    (route with its options, and instances, immutable), bind_host, haproxy_log, and the compiled block itself
    (an edited template compiles to a new one). The cache holds the parts of the last render only,
    so it never outgrows the config. Route dicts are kept per RouteState too: an unchanged route is
    not converted again.
    """

    def __init__(self) -> None:
        self._texts: Dict[Tuple[Any, ...], RenderedPart] = {}
        # id -> compiled block, for the blocks the cached texts' keys name by id: kept alive (this
        # render's and the last one's, whose texts a render looks up) so that no id is reused
        self._blocks: Tuple[Dict[int, Any], Dict[int, Any]] = ({}, {})
        self._dicts: Dict[RouteState, Dict[str, Any]] = {}
        # block key -> (the routes a route_parts() call got, in order, and the text of each)
        self._runs: Dict[Tuple[Any, ...], Tuple[List[Any], List[RenderedPart]]] = {}
        self.renders = 0  # blocks rendered (not taken from the cache), for tests and benchmarks

    def bind(self, states: Sequence[RouteState], bind_host: str, haproxy_log: bool) -> Tuple[list, Any, Any]:
        """(the routes list of the context, its route_part and route_parts functions) for one render."""
        dicts = {state: self._dicts.get(state) or _route(state) for state in states}
        self._dicts = dicts
        by_id = {id(d): state for state, d in dicts.items()}
        texts: Dict[Tuple[Any, ...], RenderedPart] = {}
        blocks: Dict[int, Any] = {}
        previous, self._texts, self._blocks = self._texts, texts, (self._blocks[1], blocks)
        runs: Dict[Tuple[Any, ...], Tuple[List[Any], List[RenderedPart]]] = {}
        previous_runs, self._runs = self._runs, runs

        def block_key(caller: Any) -> Tuple[Any, ...]:
            # The block's code by identity: hashing a code object hashes all of its constants, which
            # for a route's block costs more than the rest of the lookup.
            if caller is None:
                raise ValueError("route_part() and route_parts() are call blocks over `routes`")
            block = getattr(caller, "_func", caller)
            code = getattr(block, "__code__", block)
            blocks[id(code)] = code
            return (id(code), bind_host, haproxy_log)

        def part(route: Any, block: Tuple[Any, ...], caller: Any, *args: Any) -> RenderedPart:
            state = by_id.get(id(route))
            if state is None:
                raise ValueError("route_part() and route_parts() are call blocks over `routes`")
            key = (block, state)
            text = texts.get(key) or previous.get(key)
            if text is None:
                text = RenderedPart(caller(*args))
                self.renders += 1
            texts[key] = text
            return text

        def route_part(route: Any, caller: Any = None) -> RenderedPart:
            return part(route, block_key(caller), caller)

        def route_parts(routes: Any, caller: Any = None) -> RenderedPart:
            # One call for every route, and only the routes that are not the objects the last call
            # got at the same place are looked at: at 1,000 routes even a cache lookup per route
            # costs more than the part a change renders again. A route is the same object only for
            # the same state (bind keeps one per state), and the objects of the last call are alive
            # in `previous_runs`, so no id below can belong to another.
            block = block_key(caller)
            routes = list(routes)
            last = previous_runs.get(block)
            if last is not None and len(last[0]) == len(routes):
                made = list(last[1])
                for i in [i for i, same in enumerate(map(is_, routes, last[0])) if not same]:
                    made[i] = part(routes[i], block, caller, routes[i])
            else:
                known = dict(zip(map(id, last[0]), last[1])) if last is not None else {}
                made = [known.get(id(route)) or part(route, block, caller, route) for route in routes]
            runs[block] = (routes, made)
            return RenderedPart("".join(made))

        return [dicts[state] for state in states], route_part, route_parts


def context(snapshot: Snapshot, settings: Settings, parts: Optional[RouteParts] = None) -> Dict[str, Any]:
    """The template context docs/templates.md describes; plain data only, and route_part().

    `parts` carries the rendered routes from one render to the next (sync keeps one); without it
    every route is rendered."""
    state_dir = str(Path(settings.state_dir).absolute())
    stats_socket = str(Path(settings.haproxy_stats_socket).absolute())
    master_socket = str(Path(settings.haproxy_master_socket).absolute())
    bind_host = f"[{settings.bind}]" if ":" in settings.bind else settings.bind
    routes, route_part, route_parts = (parts or RouteParts()).bind(
        snapshot.routes, bind_host, settings.haproxy_log
    )
    return {
        "routes": routes,
        "route_part": route_part,
        "route_parts": route_parts,
        "bind": settings.bind,
        "bind_host": bind_host,
        "state_dir": state_dir,
        "stats_socket": stats_socket,
        "master_socket": master_socket,
        "settings": {
            "bind": settings.bind,
            "state_dir": state_dir,
            "stats_socket": stats_socket,
            "master_socket": master_socket,
            "apply_mode": settings.watch.apply_mode,
            "include_warning": settings.watch.include_warning,
            "datacenter": settings.agent.datacenter,
            "node_name": settings.agent.node_name,
            "haproxy_log": settings.haproxy_log,
        },
        "haproxy_user": settings.haproxy_user,
        "haproxy_group": settings.haproxy_group,
        "haproxy_log": settings.haproxy_log,
    }


def render(template: jinja2.Template, snapshot: Snapshot, settings: Settings) -> str:
    """Snapshot -> config text; RenderError naming the template's file:line on any runtime error."""
    return render_context(template, context(snapshot, settings))


def render_context(template: jinja2.Template, values: Dict[str, Any]) -> str:
    """Any template with any context; RenderError naming the template's file:line on any runtime error."""
    try:
        return template.render(values)
    except jinja2.TemplateSyntaxError as e:  # e.g. a broken {% include %}d file
        raise RenderError(
            e.filename or template.filename or "?", e.lineno, e.message or "syntax error"
        ) from None
    except Exception as e:
        file, line = _template_position(e, template)
        message = str(e) if isinstance(e, jinja2.TemplateError) else f"{type(e).__name__}: {e}"
        raise RenderError(file, line, message) from None


def _route(state: RouteState) -> Dict[str, Any]:
    route = state.route
    return {
        "service": route.service,
        "port": route.port,
        "mode": route.mode,
        "tag": route.tag,
        "options": route.options.as_dict(),
        "datacenter": route.datacenter,
        "failover": list(route.failover),
        "instances": [instance_data(i) for i in state.instances],
        "backups": [instance_data(i) for i in state.backups],
        "backup_datacenter": state.backup_datacenter,
    }


def instance_data(instance: Instance) -> Dict[str, Any]:
    """One instance as templates see it (docs/templates.md, "Each instance")."""
    return {
        "id": instance.id,
        "node": instance.node,
        "address": instance.address,
        "hostname": not _is_ip(instance.address),
        "port": instance.port,
        "endpoint": f"{_host(instance.address)}:{instance.port}",
        "tags": list(instance.tags),
        "meta": dict(instance.meta),
        "weight": instance.weight,
        "key": instance.key,
    }


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _host(address: str) -> str:
    try:
        return f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    except ValueError:
        return address  # a host name


def _template_position(error: BaseException, template: jinja2.Template) -> tuple[str, Optional[int]]:
    """The innermost template frame of the traceback: Jinja2 rewrites frames to template file:line."""
    own = template.filename or "?"
    found: tuple[str, Optional[int]] = (own, None)
    tb = error.__traceback__ or sys.exc_info()[2]
    while tb is not None:
        # Frames Jinja2 rewrote carry the template's file name instead of a Python module's.
        filename = tb.tb_frame.f_code.co_filename
        if "__jinja_template__" in tb.tb_frame.f_globals or not filename.endswith(".py"):
            found = (filename, tb.tb_lineno)
        tb = tb.tb_next
    return found
