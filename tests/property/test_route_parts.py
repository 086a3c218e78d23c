"""Rendering only the routes that changed gives exactly the config a whole render gives.

HAProxy's default template renders every route in one route_parts() call block (a user template may use
route_part() per route), each route's text cached from one render to the next by everything the part is
rendered from (the route's options among them). Whatever came before (any earlier snapshot, any bind
address or log switch, an edited template), the next render with the cache equals the render of the same
snapshot from nothing, and equals the whole render of the same template written as a plain loop.
"""

from __future__ import annotations

import gc
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from basenode.config import Route, Settings
from basenode.route_options import RouteOptions
from basenode.snapshot import Instance, RouteState, Snapshot
from basenode.template import render

TEMPLATE = render.load_template(render.default_template(), single_line=True)
PARTS_BLOCK = "{% call(route) route_parts(routes) %}\n"


def default_template_as(opening: str, closing: str):
    """The default template with its route_parts() block written another way."""
    text = render.default_template().read_text()
    assert text.count(PARTS_BLOCK) == 1
    head, body = text.split(PARTS_BLOCK)
    body, tail = body.rsplit("{% endcall %}\n", 1)
    env = render._environment(render.default_template().parent, single_line=True)
    return env.from_string(head + opening + body + closing + tail)


# The same template as a whole render (no parts) and with a call block per route.
WHOLE = default_template_as("{% for route in routes %}\n", "{% endfor %}\n")
PER_ROUTE = default_template_as(
    "{% for route in routes %}\n{% call route_part(route) %}\n", "{% endcall %}\n{% endfor %}\n"
)

instances = st.builds(
    Instance,
    id=st.sampled_from(["a", "b", "c", "d"]),
    node=st.sampled_from(["n1", "n2"]),
    address=st.sampled_from(["10.0.0.1", "10.0.0.2", "::1", "db.example"]),
    port=st.integers(1, 65535),
    weight=st.integers(0, 256),
)
options = st.sampled_from(
    [
        RouteOptions(),
        RouteOptions(balance="first"),
        RouteOptions(balance="first", maxconn=10),
        RouteOptions(check="/health", observe="layer4", error_limit=3),
        RouteOptions(timeout_client="5s", timeout_server="1m"),
    ]
)
routes = st.builds(
    lambda name, port, mode, tag, opts, found: RouteState(
        Route(name, port, mode, tag, options=opts),
        tuple(sorted({i.key: i for i in found}.values(), key=lambda i: i.key)),
    ),
    name=st.sampled_from(["web", "db", "cache", "api"]),
    port=st.integers(1024, 65535),
    mode=st.sampled_from(["tcp", "http"]),
    tag=st.sampled_from([None, "v1"]),
    opts=options,
    found=st.lists(instances, max_size=4),
)
snapshots = st.lists(routes, max_size=4, unique_by=lambda r: r.route.service).map(
    lambda states: Snapshot(tuple(sorted(states, key=lambda r: r.route.service)))
)
settings_ = st.builds(
    lambda bind, log: Settings(state_dir=Path("/run/basenode"), bind=bind, haproxy_log=log),
    bind=st.sampled_from(["127.0.0.1", "::1"]),
    log=st.booleans(),
)


@given(earlier=st.lists(st.tuples(snapshots, settings_), max_size=3), now=snapshots, settings=settings_)
def test_a_render_with_cached_route_parts_equals_a_render_from_nothing(earlier, now, settings):
    parts = render.RouteParts()
    for snapshot, those in earlier:
        render.render_context(TEMPLATE, render.context(snapshot, those, parts))
    cached = render.render_context(TEMPLATE, render.context(now, settings, parts))
    assert cached == render.render_context(TEMPLATE, render.context(now, settings))


def test_a_change_to_one_route_renders_that_route_only():
    settings = Settings(state_dir=Path("/run/basenode"))
    web = RouteState(Route("web", 9001), (Instance("a", "n1", "10.0.0.1", 80),))
    db = RouteState(Route("db", 9002), (Instance("b", "n1", "10.0.0.2", 5432),))
    parts = render.RouteParts()
    render.render_context(TEMPLATE, render.context(Snapshot((db, web)), settings, parts))
    assert parts.renders == 2
    moved = RouteState(web.route, (Instance("a", "n1", "10.0.0.1", 81),))
    text = render.render_context(TEMPLATE, render.context(Snapshot((db, moved)), settings, parts))
    assert parts.renders == 3 and "10.0.0.1:81" in text and "10.0.0.2:5432" in text


@given(earlier=st.lists(st.tuples(snapshots, settings_), max_size=3), now=snapshots, settings=settings_)
def test_a_render_in_parts_equals_the_whole_render_of_the_same_template(earlier, now, settings):
    parts = render.RouteParts()
    for snapshot, those in earlier:
        render.render_context(PER_ROUTE, render.context(snapshot, those, parts))
        render.render_context(TEMPLATE, render.context(snapshot, those, parts))
    whole = render.render_context(WHOLE, render.context(now, settings))
    assert render.render_context(TEMPLATE, render.context(now, settings, parts)) == whole
    assert render.render_context(PER_ROUTE, render.context(now, settings, parts)) == whole


def test_an_edited_template_renders_its_own_parts_not_the_old_ones():
    settings = Settings(state_dir=Path("/run/basenode"))
    snapshot = Snapshot((RouteState(Route("web", 9001), (Instance("a", "n1", "10.0.0.1", 80),)),))
    parts = render.RouteParts()
    for n in range(20):
        # The old template is gone before the new one is compiled: its block's memory (and id) is
        # free for the new block to take.
        gc.collect()
        env = render._environment(Path("/"), single_line=True)
        block = f"v{n} {{{{ route.service }}}}\n"
        edited = env.from_string(f"{{% call(route) route_parts(routes) %}}{block}{{% endcall %}}")
        assert render.render_context(edited, render.context(snapshot, settings, parts)) == f"v{n} web\n"
        del edited, env


@given(
    first=snapshots,
    fates=st.lists(st.sampled_from(["same", "copy", "new"]), min_size=4, max_size=4),
    replacement=routes,
    settings=settings_,
)
def test_a_render_after_the_snapshot_it_changed_from_equals_a_render_from_nothing(
    first, fates, replacement, settings
):
    # Routes kept as the same objects (their parts reused where they stood), as equal new objects, or
    # replaced by another route state: the cached render equals a whole one.
    parts = render.RouteParts()
    render.render_context(TEMPLATE, render.context(first, settings, parts))
    states = []
    for state, fate in zip(first.routes, fates):
        if fate == "same":
            states.append(state)
        elif fate == "copy":
            states.append(RouteState(state.route, tuple(state.instances)))
        elif replacement.route.service not in {s.route.service for s in first.routes}:
            states.append(replacement)
    now = Snapshot(tuple(sorted(states, key=lambda r: r.route.service)))
    cached = render.render_context(TEMPLATE, render.context(now, settings, parts))
    assert cached == render.render_context(WHOLE, render.context(now, settings))
