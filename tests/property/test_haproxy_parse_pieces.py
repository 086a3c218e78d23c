"""Reading a config section by section, reusing the sections of the last parse, reads it as a whole would.

parse_config cuts the text where a line opens a section and takes each section it read in the last
parse from there: at 1,000 routes a change to one of them reads one section again, not 20,000 lines.
Whatever text came before, and however odd the lines (indented keywords, comments glued to a keyword,
quotes, other line breaks), the result equals the parse of the same text read in one piece.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from basenode.output.haproxy import parse

KEYWORDS = ["global", "defaults", "frontend", "backend", "listen", "resolvers", "backends", "program"]
lines = st.one_of(
    st.builds(
        lambda indent, keyword, gap, name: f"{indent}{keyword}{gap}{name}",
        st.sampled_from(["", " ", "\t", "\x0c"]),
        st.sampled_from(KEYWORDS),
        st.sampled_from([" ", "  ", "#", "\t", "\x1c", ""]),
        st.sampled_from(["web", "db", "", "web # x", 'q"x', "\\"]),
    ),
    st.builds(
        lambda indent, name, address, rest: f"{indent}server {name} {address}{rest}",
        st.sampled_from(["    ", "", "\t"]),
        st.sampled_from(["n1_a", "n1_b", "n2_a"]),
        st.sampled_from(["10.0.0.1:80", "10.0.0.2:8080", "[fd00::1]:80", "db.example:5432", "bad"]),
        st.sampled_from(["", " weight 3", " weight 1 check", " # comment", ' "quoted"', " weight 999"]),
    ),
    st.sampled_from(
        [
            "    balance roundrobin",
            "    mode http",
            "    cookie SRV insert indirect nocache dynamic",
            "# a comment",
            "",
            "    bind 127.0.0.1:9000",
            "    timeout  server 1m",
        ]
    ),
)
texts = st.lists(lines, max_size=40).map(lambda ls: "".join(f"{line}\n" for line in ls))
endings = st.sampled_from(["\n", "\r\n", ""])


def whole(text: str) -> parse.ParsedConfig:
    """The same text read as one piece, with nothing remembered."""
    memo = parse.SectionMemo()
    memo_split, parse.split_sections = parse.split_sections, lambda t: [t]
    try:
        return memo.parse(text)
    finally:
        parse.split_sections = memo_split


@given(earlier=st.lists(texts, max_size=3), now=texts, ending=endings)
def test_a_parse_in_pieces_after_any_other_parses_equals_a_parse_in_one_piece(earlier, now, ending):
    memo = parse.SectionMemo()
    for text in earlier:
        memo.parse(text)
    text = now.replace("\n", ending) if ending != "\n" else now
    assert memo.parse(text) == whole(text)


line_lists = st.lists(lines, max_size=40)
edits = st.tuples(st.integers(0, 40), st.integers(0, 5), st.lists(lines, max_size=5))


@given(before=line_lists, edit=edits, ending=endings)
def test_a_parse_of_an_edited_text_after_the_text_it_was_edited_from_equals_a_parse_in_one_piece(
    before, edit, ending
):
    # The pieces the two texts begin and end with are taken from the last parse where they stood.
    at, removed, inserted = edit
    after = [*before[:at], *inserted, *before[at + removed :]]
    old, new = ("".join(f"{line}{ending}" for line in lines) for lines in (before, after))
    memo = parse.SectionMemo()
    memo.parse(old)
    assert memo.parse(new) == whole(new)
    assert memo.parse(old) == whole(old)


def test_a_change_to_one_backend_reads_that_section_only():
    sections = [
        f"backend b{n}\n    balance roundrobin\n    server n1_a 10.0.0.{n}:80 weight 1\n" for n in range(50)
    ]
    memo = parse.SectionMemo()
    first = memo.parse("".join(sections))
    read = []
    real, parse._read_piece = parse._read_piece, lambda t: read.append(t) or real(t)
    try:
        sections[7] = sections[7].replace("weight 1", "weight 2")
        second = memo.parse("".join(sections))
    finally:
        parse._read_piece = real
    assert read == [sections[7]]
    assert second.skeleton == first.skeleton and second.servers["b7"]["n1_a"].weight == 2
    assert second.servers["b8"] is first.servers["b8"]  # the section as read before, not a copy
