"""Whatever a cluster registers in Consul, basenode renders a config HAProxy accepts, with no line the
template did not write, serving every instance it may serve and no other.

Each hypothesis example (strategies: hostile.py) writes 1-3 KV routes and 1-4 instances per route
into a real Consul agent, some through the catalog on 1-2 external nodes, some through the agent on its
own node; then basenode's own code reads the catalog (routes.fetch_snapshot), renders the bundled
template (render.load_template / render.render) and checks the result with the real `haproxy -c`
(haproxy.check). What must come out is decided by oracle.py from the documented rules and from the
catalog as Consul answers it over plain HTTP, not from basenode's code.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Iterator, List

import jinja2
import pytest
from hypothesis import event, example, given

from basenode.config import ConsulHTTP, Route, Settings
from basenode.output import haproxy
from basenode.routes import fetch_snapshot
from basenode.snapshot import Instance, RouteState, Snapshot
from basenode.template import render
from tests.conftest import require_binary
from tests.support.consul_agent import ConsulAgent, running_agent

from . import catalog, oracle
from .hostile import Example, Node, Registration, RouteSpec, examples

_serial = itertools.count()


@pytest.fixture(scope="module")
def agent() -> Iterator[ConsulAgent]:
    """An agent of this module's own: every example empties the KV routes prefix and its nodes, which
    must not race other tests' routes (the session agent is shared with tests/integration)."""
    yield from running_agent(require_binary("consul"))


@pytest.fixture(scope="module")
def template() -> jinja2.Template:
    return render.load_template(render.default_template())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("property")


def neutral_config(
    expected: List[oracle.ExpectedRoute], template: jinja2.Template, settings: Settings
) -> str:
    """The template rendered for the same routes, modes and server counts, with stand-in values."""
    routes = []
    for r, route in enumerate(expected):
        instances = tuple(
            Instance(oracle.NEUTRAL_ID.format(i), oracle.NEUTRAL_NODE, f"192.0.2.{i % 250 + 1}", 1)
            for i in range(len(route.servers))
        )
        neutral = Route(oracle.NEUTRAL_SERVICE.format(r), oracle.NEUTRAL_PORT, route.mode)
        routes.append(RouteState(neutral, instances))
    return render.render(template, Snapshot(tuple(routes)), settings)


def plain(node: int, service_id: str) -> Registration:
    return Registration("catalog", node, service_id, "", 8080, (), (), None, None)


# Cases worth running on every commit whatever the generator draws: two instances whose node and ID
# join to the same server name (n + a_b, n_a + b), and one route whose name Consul reads cannot take.
COLLIDING_NAMES = Example(
    nodes=(Node("n", "192.0.2.1"), Node("n_a", "192.0.2.2")),
    routes=(RouteSpec("web", 9000, "", None, (plain(0, "a_b"), plain(1, "b"))),),
)
DOT_ROUTE = Example(
    nodes=(Node("n", "192.0.2.1"),),
    routes=(
        RouteSpec("..", 9000, "", None, (plain(0, "a"),)),
        RouteSpec("web", 9001, "", None, (plain(0, "b"),)),
    ),
)


@given(example=examples())
@example(example=COLLIDING_NAMES)
@example(example=DOT_ROUTE)
def test_any_registration_renders_a_checked_config_of_template_lines_with_exactly_the_valid_instances(
    agent: ConsulAgent, template: jinja2.Template, workdir: Path, example: Example
) -> None:
    """Three properties of every example.

    1. `haproxy -c` accepts the rendered config (basenode's own haproxy.check on the file).
    2. No line the template did not write. The template is rendered a second time for the routes and
       server counts the oracle expects, with neutral stand-ins (`zzroute0`, `zznode_zzid0`,
       `192.0.2.1:1 weight 1`, port 54321) where Consul's values go. The two texts must have the same
       number of lines, and each rendered line must match in full the pattern made from its neutral
       twin: its literal text exactly, each stand-in replaced by the class of values it stands for
       (service name [A-Za-z0-9._-]{1,128}; server name [A-Za-z0-9._:-]+; endpoint IPv4 | [IPv6] |
       lower-case host name, `:port`; weight digits; optional ` init-addr last,libc,none`). None of
       these classes holds whitespace, a quote or `#`, so a Consul value can neither add a line nor
       add a word to one: a newline or space smuggled through would change the line count or fail the
       match, and any value that is not of its class fails the match.
    3. Exactly the valid instances. The frontends are exactly the routes the oracle accepts, on their
       ports and modes, and each backend's server lines, read without their server names, are exactly
       `<endpoint> weight <weight>[ init-addr last,libc,none]` of the catalog entries the oracle finds
       valid and passing: every valid one present, once, and nothing else.
    """
    # Every port a KV route may name, and none taken: the oracle knows the catalog rules, not the port policy.
    settings = Settings(
        state_dir=workdir,
        consul_http=ConsulHTTP(addr=agent.http_addr),
        kv_route_ports=(1, 65535),
        run_consul=False,
    )
    try:
        stored = catalog.store(agent, example, next(_serial))
        expected = [
            oracle.with_servers(route, catalog.health_entries(agent, route.name))
            for route in oracle.expected_routes(example, stored.kv_keys)
        ]
        text = render.render(template, fetch_snapshot(settings), settings)
    finally:
        catalog.remove(agent, example)
    servers = sum(len(r.servers) for r in expected)
    event(f"routes served: {len(expected)}")
    event(f"instances served: {'0' if not servers else '1-5' if servers < 6 else '6+'}")
    event(f"instances refused by Consul or basenode: {'some' if stored.registered > servers else 'none'}")

    # 1. HAProxy accepts it.
    config = workdir / "candidate.cfg"
    config.write_text(text)
    haproxy.check(require_binary("haproxy"), config)

    # 2. Every line is a template line with values of their class in it.
    lines = text.splitlines()
    neutral = neutral_config(expected, template, settings).splitlines()
    assert len(lines) == len(neutral), text
    for line, twin in zip(lines, neutral):
        assert oracle.line_shape(twin).fullmatch(line), f"{line!r} is not of the shape of {twin!r}"

    # 3. Exactly the valid routes and instances.
    found = oracle.sections(text)
    assert sorted(s for s in found if s.startswith("frontend ")) == [f"frontend {r.name}" for r in expected]
    for route in expected:
        frontend, backend = found[f"frontend {route.name}"], found[f"backend {route.name}"]
        assert f"    bind 127.0.0.1:{route.port}" in frontend
        assert f"    mode {route.mode}" in frontend and f"    mode {route.mode}" in backend
        want = Counter(s.tail for s in route.servers)
        assert oracle.server_tails(backend) == want, f"backend {route.name}:\n" + "\n".join(backend)
