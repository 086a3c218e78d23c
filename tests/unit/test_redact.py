"""No KV or env() value in an error: errors name the key and what was wrong (issue 12, item 5)."""

from __future__ import annotations

import pytest

from basenode.dependency import KEY, PREFIX, Query
from basenode.template import functions, render


def haproxy_like(tmp_path, text: str):
    path = tmp_path / "t.j2"
    path.write_text(text)
    return render.load_template(path, single_line=True)


def test_a_kv_value_with_a_newline_is_named_by_its_key_with_length_and_position(tmp_path):
    template = haproxy_like(tmp_path, 'x\nmaxconn {{ kv("app/n") }}\n')
    done = functions.render_template(template, {Query(KEY, "app/n"): "hunter22\n"})
    assert done.error is not None and done.error.line == 2
    assert "kv key 'app/n'" in done.error.message
    assert "line break U+000A at character 9 of 9" in done.error.message
    assert "hunter22" not in str(done.error)


def test_env_and_kv_tree_values_are_named_too(tmp_path):
    template = haproxy_like(tmp_path, '{{ env("APP_X") }}{{ kv_tree("a")["b"] }}\n')
    done = functions.render_template(template, {Query(PREFIX, "a/"): ()}, environ={"APP_X": "p\x01w"})
    assert "environment variable 'APP_X'" in done.error.message and "control character U+0001" in (
        done.error.message
    )


def test_any_error_that_quotes_a_value_has_it_taken_out(tmp_path):
    template = haproxy_like(tmp_path, '{{ kv_tree("a")[kv("app/k")] }}\n')
    data = {Query(PREFIX, "a/"): (), Query(KEY, "app/k"): "opensesame"}
    done = functions.render_template(template, data)
    assert done.error is not None and "opensesame" not in str(done.error)
    assert "<kv key 'app/k'>" in done.error.message


@pytest.mark.parametrize(
    "message, expected",
    [
        ("quoted 'tok\\n' here", "quoted '<kv key 'k'>' here"),
        ("bare tok", "bare <kv key 'k'>"),
        ("a value of 1", "a value of 1"),
    ],
)
def test_redact_takes_every_form_of_a_value_out(message, expected):
    assert functions.redact(message, [("tok\n", "kv key 'k'"), ("1", "kv key 'one'")]) == expected
