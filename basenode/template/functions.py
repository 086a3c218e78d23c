"""Render one template from Consul data, recording which data it asked for.

What a render calls is what gets watched, as consul-template does it: each template function records
the Consul query behind it (a `Query`), reads that query's value from a shared cache (`Data`, filled
by the watch), and a query with no value yet is recorded as missing. A render with missing queries is
incomplete: its text is not used; the loop starts watching the missing queries and renders again when
their first answers arrive. Until then a function returns an empty value (no instances, the default,
an empty tree) so that one pass finds every dependency the template has, not just the first.

Functions (in the sandboxed environment of render.py, alongside whatever else the caller passes):

  service(name, tag=None, passing=True, datacenter=None)
                                         instances of a service, each with the fields of a route's
                                         instances (render.py's docstring); passing=True keeps only
                                         those whose checks pass (or warn, with --include-warning);
                                         datacenter: another datacenter's (default: the local one)
  services()                             [{"name", "tags"}] of every service in the catalog
  kv(key, default=None)                  the key's value as text; the default when the key does not
                                         exist; with no default a missing key is undefined: printing
                                         it fails the render (the last good file stays), while
                                         `kv(k) is defined` and `kv(k) | default(..)` work
  kv_tree(prefix)                        {key relative to prefix: text} for every key under prefix
  env(name, default=None)                an environment variable of basenode (undefined if unset and
                                         no default); not watched: the environment does not change;
                                         CONSUL_HTTP_TOKEN, CONSUL_ENCRYPT, CONSUL_CLIENT_KEY refused
  node()                                 {"name", "datacenter", "address"} of the local agent's node

Catalog values were validated in basenode/dependency/ with snapshot.py's rules before they got here, as in
discovery. KV values are text (any text) and reach the template unescaped; the template picks the
escaping it needs with a filter (e.g. `| tojson` for JSON, `| replace(...)`). HAProxy's own template
is stricter: nothing it prints may hold a line break (render.load_template's single_line).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Dict, FrozenSet, List, Mapping, Optional, Sequence, Set, Tuple

import jinja2

from .. import childenv
from ..config import DATACENTER_RE
from ..dependency import KEY, NODE, PREFIX, SERVICE, SERVICES, Query
from ..dependency.kv import tree
from ..snapshot import valid_service_name
from . import render

FUNCTION_NAMES = ("service", "services", "kv", "kv_tree", "env", "node")


# The watch's cache: each query's validated, immutable value, as basenode/dependency/ documents it.
Data = Mapping[Query, Any]

EMPTY_NODE = {"name": "", "datacenter": "", "address": ""}


@dataclass(frozen=True)
class Rendered:
    """A render's text (None when data was missing or it failed), the queries it used and lacked, and
    its error. A failed render still says what it used: the key whose absence broke it is watched, and
    its arrival renders the template again."""

    text: Optional[str]
    used: FrozenSet[Query]
    missing: FrozenSet[Query]
    error: Optional[render.RenderError] = None
    # (text, where from) of every KV and env() value the render got: what `redact` takes out of the
    # messages about it (its check's output, say), so that no such value reaches a log or /health.
    given: Tuple[Tuple[str, str], ...] = ()


@dataclass
class Shared:
    """Values built from Data once per round and handed to every template that asks (read-only there:
    the environment is an immutable sandbox)."""

    values: Dict[Tuple[Any, ...], Any] = field(default_factory=dict)

    def get(self, key: Tuple[Any, ...], build: Callable[[], Any]) -> Any:
        if key not in self.values:
            self.values[key] = build()
        return self.values[key]


# The ACL token and the gossip key: basenode keeps them out of logs and command lines, and a template
# (whose output is often world-readable) does not get them either.
WITHHELD_ENV = childenv.SECRET_ENV


class Recorder:
    """The template functions for one render: each records its query and reads the shared cache."""

    def __init__(
        self, data: Data, shared: Shared, environ: Mapping[str, str], env_allowed: Optional[Collection[str]]
    ) -> None:
        self.data = data
        self.shared = shared
        self.environ = environ
        self.env_allowed = None if env_allowed is None else frozenset(env_allowed)  # None: any name
        self.used: Set[Query] = set()
        self.missing: Set[Query] = set()
        self.given: Dict[str, str] = {}  # text -> where from (Rendered.given)

    def _give(self, text: str, source: str) -> render.Sourced:
        self.given.setdefault(text, source)
        return render.Sourced(text, source)

    def functions(self) -> Dict[str, Callable[..., Any]]:
        return {
            "service": self.service,
            "services": self.services,
            "kv": self.kv,
            "kv_tree": self.kv_tree,
            "env": self.env,
            "node": self.node,
        }

    def _value(self, query: Query) -> Tuple[bool, Any]:
        self.used.add(query)
        if query not in self.data:
            self.missing.add(query)
            return False, None
        return True, self.data[query]

    def service(
        self, name: str, tag: Optional[str] = None, passing: bool = True, datacenter: Optional[str] = None
    ) -> List[Dict[str, Any]]:
        if not valid_service_name(name):
            raise ValueError(f"service(): {name!r} is not a valid service name")
        if tag is not None and not isinstance(tag, str):
            raise ValueError(f"service(): tag must be text, got {tag!r}")
        if datacenter is not None and not (isinstance(datacenter, str) and DATACENTER_RE.match(datacenter)):
            raise ValueError(f"service(): datacenter must match [A-Za-z0-9_-]{{1,64}}, got {datacenter!r}")
        query = Query(SERVICE, name, datacenter or "")
        known, value = self._value(query)
        if not known:
            return []

        def build() -> List[Dict[str, Any]]:
            return [
                render.instance_data(instance)
                for instance, healthy in value
                if (healthy or not passing) and (tag is None or tag in instance.tags)
            ]

        return self.shared.get((query, tag, bool(passing)), build)

    def services(self) -> List[Dict[str, Any]]:
        query = Query(SERVICES)
        known, value = self._value(query)
        if not known:
            return []
        return self.shared.get((query,), lambda: [{"name": n, "tags": list(t)} for n, t in value])

    def kv(self, key: str, default: Optional[str] = None) -> Any:
        query = Query(KEY, _key(key, "kv()"))
        known, value = self._value(query)
        if not known:
            return default if default is not None else ""
        if value is not None:
            return self._give(value, f"kv key {query.name!r}")
        if default is not None:
            return default
        return jinja2.StrictUndefined(
            hint=f"kv key {query.name!r} does not exist in Consul (and kv() was given no default)"
        )

    def kv_tree(self, prefix: str) -> Dict[str, str]:
        query = Query(PREFIX, tree_prefix(prefix))
        known, value = self._value(query)
        if not known:
            return {}
        found = self.shared.get((query,), lambda: dict(tree(query.name, value)))
        return {k: self._give(v, f"kv key {query.name + k!r}") for k, v in found.items()}

    def env(self, name: str, default: Optional[str] = None) -> Any:
        if name in WITHHELD_ENV:
            raise ValueError(f"env({name!r}): basenode's secrets are not given to templates")
        if self.env_allowed is not None and name not in self.env_allowed:
            raise ValueError(
                f"env({name!r}): not in template_env (BASENODE_TEMPLATE_ENV), "
                "the variables a template may read"
            )
        value = self.environ.get(name)
        if value is not None:
            return self._give(value, f"environment variable {name!r}")
        if default is not None:
            return default
        return jinja2.StrictUndefined(
            hint=f"environment variable {name!r} is not set (and env() was given no default)"
        )

    def node(self) -> Dict[str, str]:
        known, value = self._value(Query(NODE))
        return dict(value) if known else dict(EMPTY_NODE)


def _key(key: Any, where: str) -> str:
    if not isinstance(key, str) or not key.strip("/"):
        raise ValueError(f"{where}: expected a key, got {key!r}")
    return key.lstrip("/")


def tree_prefix(prefix: Any) -> str:
    """'app' and '/app/' -> 'app/' (the folder, not every key starting with 'app'); '' or '/' -> ''."""
    if not isinstance(prefix, str):
        raise ValueError(f"kv_tree(): expected a prefix, got {prefix!r}")
    prefix = prefix.lstrip("/")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def render_template(
    template: jinja2.Template,
    data: Data,
    extra: Optional[Mapping[str, Any]] = None,
    shared: Optional[Shared] = None,
    environ: Optional[Mapping[str, str]] = None,
    partial: bool = False,
    env_allowed: Optional[Collection[str]] = None,
) -> Rendered:
    """Render with the template functions over `data`, plus the `extra` context (e.g. plugins' keys).

    A template that fails with all its data present gives Rendered.error (file:line: message); a
    failure while data is missing only means "not yet" (the empty stand-ins may be what broke it).
    `partial` keeps the text rendered with the stand-ins (`basenode check` without a cluster).
    env() reads the variables in `env_allowed` (Settings.template_env) of `environ` (default basenode's
    own); a given `environ` with no `env_allowed` is all allowed (tests).
    """
    allowed = env_allowed
    if environ is None:
        environ, allowed = os.environ, env_allowed or ()
    recorder = Recorder(data, shared or Shared(), environ, allowed)
    values = {**(extra or {}), **recorder.functions()}
    text: Optional[str] = None
    error: Optional[render.RenderError] = None
    try:
        text = render.render_context(template, values)
    except render.RenderError as e:
        error = e
    given = tuple(recorder.given.items())
    if error is not None:
        error = render.RenderError(error.file, error.line, redact(error.message, given))
    missing = frozenset(recorder.missing) if not partial else frozenset()
    return Rendered(
        text=None if missing else text,
        used=frozenset(recorder.used),
        missing=missing,
        error=None if missing else error,
        given=given,
    )


REDACT_MIN = 3  # shorter values ("1", "on") are too common to take out of a message, and too short to matter


def redact(message: str, given: Sequence[Tuple[str, str]]) -> str:
    """`message` with each KV or env() value in `given` (as it is, stripped, or as repr shows it)
    replaced by `<kv key '...'>`: an error never carries a value, whatever raised it."""
    forms = []
    for text, source in given:
        for form in {text, text.strip(), repr(text)[1:-1]}:
            if len(form) >= REDACT_MIN:
                forms.append((form, source))
    for form, source in sorted(forms, key=lambda f: -len(f[0])):
        if form in message:
            message = message.replace(form, f"<{source}>")
    return message
