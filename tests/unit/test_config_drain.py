"""The drain's two settings: `drain` (the upper bound) and `drain_quiet`, flag > environment > file."""

from __future__ import annotations

from pathlib import Path

import pytest

from basenode import config


def load(tmp_path: Path, text: str, env: dict, **flags: str) -> config.Settings:
    path = tmp_path / "basenode.toml"
    path.write_text(text)
    environ = {"PATH": "/usr/bin:/bin", **env}
    return config.load(config.Flags(config=str(path), no_consul=True, no_haproxy=True, **flags), environ)


def test_drain_quiet_defaults_to_half_a_second_and_each_layer_overrides_it(tmp_path):
    assert load(tmp_path, "", {}).drain_quiet == 0.5
    assert load(tmp_path, "drain_quiet = 1.5\n", {}).drain_quiet == 1.5
    assert load(tmp_path, "drain_quiet = 1.5\n", {"BASENODE_DRAIN_QUIET": "0.25"}).drain_quiet == 0.25
    flagged = load(tmp_path, "drain_quiet = 1.5\n", {"BASENODE_DRAIN_QUIET": "0.25"}, drain_quiet="3")
    assert (flagged.drain_quiet, flagged.drain) == (3.0, 2.0)


@pytest.mark.parametrize(
    "text, env, flags, message",
    [
        (
            'drain_quiet = "soon"\n',
            {},
            {},
            'basenode.toml:1: drain_quiet: expected a number of seconds, got "soon"',
        ),
        (
            "",
            {"BASENODE_DRAIN_QUIET": "x"},
            {},
            'BASENODE_DRAIN_QUIET: expected a number of seconds, got "x"',
        ),
        ("", {}, {"drain_quiet": "-1"}, '--drain-quiet: expected a number of seconds, got "-1"'),
    ],
)
def test_a_bad_drain_quiet_names_where_it_came_from(tmp_path, text, env, flags, message):
    with pytest.raises(config.ConfigError) as e:
        load(tmp_path, text, env, **flags)
    assert str(e.value).replace(str(tmp_path) + "/", "").startswith(message)
