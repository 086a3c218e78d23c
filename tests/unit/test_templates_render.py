"""Rendering with the template functions: what a render uses is recorded; missing data means "not yet"."""

from __future__ import annotations

import re
from pathlib import Path

from basenode.dependency import KEY, NODE, PREFIX, SERVICE, SERVICES, Query
from basenode.dependency.health_service import decode
from basenode.template import render
from basenode.template.functions import Recorder, Shared, render_template


def compile_text(tmp_path: Path, text: str):
    path = tmp_path / "t.j2"
    path.write_text(text)
    return render.load_template(path)


def web_value():
    entries = []
    for sid, address, status, tags in (
        ("a", "10.0.0.1", "passing", ["primary"]),
        ("b", "10.0.0.2", "passing", []),
        ("c", "10.0.0.3", "critical", []),
    ):
        entries.append(
            {
                "Node": {"Node": "n1", "Address": "127.0.0.1"},
                "Service": {"ID": sid, "Service": "web", "Address": address, "Port": 80, "Tags": tags},
                "Checks": [{"CheckID": sid, "Status": status}],
            }
        )
    return decode("web", entries, include_warning=False)[0]


def test_a_render_records_each_query_it_made_and_which_had_no_data_yet(tmp_path):
    template = compile_text(
        tmp_path, "{{ kv('app/x', 'd') }} {{ service('web') | length }} {{ node().name }}\n"
    )
    first = render_template(template, {Query(KEY, "app/x"): "1"})
    assert first.text is None
    assert first.used == {Query(KEY, "app/x"), Query(SERVICE, "web"), Query(NODE)}
    assert first.missing == {Query(SERVICE, "web"), Query(NODE)}
    data = {
        Query(KEY, "app/x"): "1",
        Query(SERVICE, "web"): web_value(),
        Query(NODE): (("name", "n1"), ("datacenter", "dc1"), ("address", "127.0.0.1")),
    }
    second = render_template(template, data)
    assert second.text == "1 2 n1\n" and not second.missing


def test_a_failure_caused_by_missing_data_is_not_an_error_but_one_with_all_data_is(tmp_path):
    template = compile_text(tmp_path, "{{ service('web')[0].address }}\n")
    assert render_template(template, {}).text is None
    failed = render_template(template, {Query(SERVICE, "web"): ()})
    assert failed.text is None and str(failed.error).startswith(f"{tmp_path}/t.j2:1: ")


def test_service_filters_by_tag_and_health_and_gives_the_route_instance_fields(tmp_path):
    template = compile_text(
        tmp_path,
        "{% for i in service('web') %}{{ i.endpoint }} {% endfor %}|"
        "{% for i in service('web', 'primary') %}{{ i.key }}{% endfor %}|"
        "{{ service('web', passing=False) | map(attribute='id') | join(',') }}\n",
    )
    text = render_template(template, {Query(SERVICE, "web"): web_value()}).text
    assert text == "10.0.0.1:80 10.0.0.2:80 |n1_a|a,b,c\n"


def test_kv_gives_text_or_the_default_and_a_missing_key_without_default_fails_the_render(tmp_path):
    template = compile_text(tmp_path, "{{ kv('app/x', 'fallback') }}\n")
    assert render_template(template, {Query(KEY, "app/x"): "{{ 7 * 7 }}"}).text == "{{ 7 * 7 }}\n"
    assert render_template(template, {Query(KEY, "app/x"): None}).text == "fallback\n"
    strict = compile_text(tmp_path, "{{ kv('app/x') }}\n")
    failed = render_template(strict, {Query(KEY, "app/x"): None})
    assert "kv key 'app/x' does not exist in Consul" in str(failed.error)
    assert failed.used == {Query(KEY, "app/x")}  # watched: the key's arrival renders it again
    optional = compile_text(
        tmp_path, "{{ kv('app/x') | default('none') }}{% if kv('app/x') is defined %}!{% endif %}\n"
    )
    assert (
        render_template(optional, {Query(KEY, "app/x"): None}).text == "none"
    )  # trim_blocks: a block tag eats its newline


def test_kv_values_are_escaped_only_by_the_filter_the_template_asks_for(tmp_path):
    template = compile_text(tmp_path, '{"url": {{ kv("app/url") | tojson }}, "raw": "{{ kv("app/url") }}"}\n')
    text = render_template(template, {Query(KEY, "app/url"): 'a"b<c>'}).text
    assert text == '{"url": "a\\"b\\u003cc\\u003e", "raw": "a"b<c>"}\n'


def test_kv_tree_keys_are_relative_to_the_folder(tmp_path):
    template = compile_text(
        tmp_path, "{% for k, v in kv_tree('app') | dictsort %}{{ k }}={{ v }};{% endfor %}\n"
    )
    rendered = render_template(template, {Query(PREFIX, "app/"): (("app/a", "1"), ("app/sub/b", "2"))})
    assert rendered.text == "a=1;sub/b=2;"
    assert rendered.used == {Query(PREFIX, "app/")}


def test_services_and_env(tmp_path):
    template = compile_text(
        tmp_path,
        "{% for s in services() %}{{ s.name }}:{{ s.tags | join('+') }} {% endfor %}{{ env('HOME_X', 'h') }}"
        "{{ env('SET_X') }}\n",
    )
    data = {Query(SERVICES): (("db", ()), ("web", ("a", "b")))}
    assert render_template(template, data, environ={"SET_X": "!"}).text == "db: web:a+b h!\n"
    assert "environment variable 'SET_X' is not set" in str(render_template(template, data, environ={}).error)


def test_the_sandbox_still_applies_to_values_from_consul(tmp_path):
    template = compile_text(tmp_path, "{{ service('web').append(1) }}\n")
    failed = render_template(template, {Query(SERVICE, "web"): web_value()})
    assert "unsafe" in str(failed.error) and failed.text is None


def test_templates_of_one_round_share_the_values_they_build(tmp_path):
    template = compile_text(tmp_path, "{{ service('web') | length }}\n")
    shared = Shared()
    data = {Query(SERVICE, "web"): web_value()}
    render_template(template, data, shared=shared)
    render_template(template, data, shared=shared)
    assert len(shared.values) == 1


def test_env_withholds_basenodes_secrets(tmp_path):
    template = compile_text(tmp_path, "{{ env('CONSUL_HTTP_TOKEN', 'none') }}\n")
    failed = render_template(template, {}, environ={"CONSUL_HTTP_TOKEN": "s3cret"})
    assert failed.text is None and "secrets are not given" in str(failed.error)
    assert "s3cret" not in str(failed.error)


def test_the_readmes_table_of_template_functions_names_exactly_the_functions_a_template_gets():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("Functions a template can call", 1)[1].split("\n\n", 2)[1]
    documented = set(re.findall(r"^\| `(\w+)\(", table, flags=re.MULTILINE))
    assert documented == set(Recorder({}, Shared(), {}, None).functions())
