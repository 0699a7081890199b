"""rules.yaml as YAML: syntax errors, duplicate keys, merges and YAML 1.1 scalars
(caselink/rules/reader.py)."""

from __future__ import annotations

import json
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caselink.errors import RulesError
from caselink.rules import parse_rules
from caselink.rules import reader
from tests.rule_files import INCIDENT_ID
from tests.rule_files import an_event
from tests.rule_files import only_problem
from tests.rule_files import outcome_of
from tests.rule_files import planned
from tests.rule_files import problems_of


def test_a_duplicate_yaml_key_in_a_rule_is_reported_with_the_rule_name():
    problems = problems_of(
        """\
        version: 1
        rules:
          - name: twice
            stop: true
            link: {relationship: CAUSES, parent: event, child: {type: CASE, id: OPS-1}}
            stop: false
        """
    )

    assert problems == ["rules.yaml:6: rule 'twice': key 'stop' appears twice in the same mapping"]


def test_a_duplicate_yaml_key_deep_in_a_rule_is_reported_with_the_rule_name():
    problems = problems_of(
        """\
        version: 1
        rules:
          - name: deep
            link: {relationship: CAUSES, parent: event, child: {type: CASE, id: OPS-1}}
            examples:
              - source: datadog
                payload: {event: a, event: b}
                links: []
        """
    )

    assert problems == ["rules.yaml:7: rule 'deep': key 'event' appears twice in the same mapping"]


def test_a_key_that_overrides_a_yaml_merge_is_not_a_duplicate():
    rules = parse_rules(
        textwrap.dedent(
            """\
            version: 1
            rules:
              - name: first
                link: &link
                  relationship: CAUSES
                  parent: event
                  child: {type: CASE, id: OPS-1}
              - name: second
                link:
                  <<: *link
                  child: {type: CASE, id: OPS-2}
            """
        ),
        "rules.yaml",
    )

    assert planned(rules, an_event()) == [
        f"INCIDENT:{INCIDENT_ID} CAUSES CASE:OPS-1",
        f"INCIDENT:{INCIDENT_ID} CAUSES CASE:OPS-2",
    ]


def test_a_key_written_twice_after_a_yaml_merge_is_a_duplicate():
    problems = problems_of(
        """\
        version: 1
        rules:
          - name: first
            link: &link {relationship: CAUSES, parent: event, child: {type: CASE, id: OPS-1}}
          - name: second
            link:
              <<: *link
              relationship: RELATES_TO
              relationship: BLOCKS
        """
    )

    assert problems == ["rules.yaml:9: rule 'second': key 'relationship' appears twice in the same mapping"]


def test_a_duplicate_top_level_key_is_reported_with_its_line():
    problems = problems_of(
        """\
        version: 1
        rules: []
        version: 1
        """
    )

    assert problems == ["rules.yaml:3: key 'version' appears twice in the same mapping"]


def test_the_on_key_stays_a_key_and_is_not_read_as_a_yaml_boolean():
    rules = parse_rules(
        textwrap.dedent(
            """\
            version: 1
            rules:
              - name: yaml11
                on:
                  source: datadog
                  kind: incident.created
                link: {relationship: CAUSES, parent: event, child: {type: CASE, id: OPS-1}}
            """
        ),
        "rules.yaml",
        sources=("datadog",),
    )

    [rule] = rules.rules
    assert (rule.sources, rule.kinds) == (("datadog",), ("incident.created",))
    assert outcome_of(rules, an_event(kind="page.escalated"), "yaml11").outcome == "not_applicable"


@pytest.mark.parametrize("written", ["yes", "no", "on", "off", "y"])
def test_yaml_11_booleans_stay_text(written):
    problem = only_problem(
        f"""\
        version: 1
        rules:
          - name: yaml11
            enabled: {written}
            link: {{relationship: CAUSES, parent: event, child: {{type: CASE, id: OPS-1}}}}
        """
    )

    assert problem == f"rules.yaml:4: rule 'yaml11': enabled must be true or false, not '{written}'"


def test_yaml_11_dates_sexagesimals_and_octals_stay_text():
    [rule] = parse_rules(
        textwrap.dedent(
            """\
            version: 1
            rules:
              - name: yaml11
                when:
                  - {field: payload.code, equals: 010}
                link: {relationship: CAUSES, parent: event, child: {type: CASE, id: OPS-1}}
                examples:
                  - source: datadog
                    payload: {date: 2024-01-01, at: 12:30, code: 010, n: 10, ratio: 0.5, big: 1e3}
                    links: []
            """
        ),
        "rules.yaml",
    ).rules

    assert rule.examples[0].payload == {
        "date": "2024-01-01",
        "at": "12:30",
        "code": "010",
        "n": 10,
        "ratio": 0.5,
        "big": 1000.0,
    }
    assert json.loads(json.dumps(rule.examples[0].payload)) == rule.examples[0].payload
    assert rule.when is not None
    assert rule.when.items[0].holds(an_event(payload={"code": "010"}).fields())
    assert not rule.when.items[0].holds(an_event(payload={"code": 8}).fields())


@pytest.mark.parametrize(
    ("content", "line", "column", "said"),
    [
        (
            "version: 1\nrules:\n  - name: a\n    link:\n      relationship: CAUSES\n     parent: event\n",
            6,
            6,
            "this line is not indented like the lines of the block it belongs to (started on line 3)",
        ),
        ("version: 1\nrules:\n\t- name: a\n", 3, 1, "a tab character; YAML indents with spaces only"),
        ("version: 1\nrules:\n  - name: a\n    description: note: this\n", 4, 22, "text that contains ': '"),
        ("version: 1\nrules:\n  - name: 'a\n    on: x\n", 5, 1, "the quoted text that starts on line 3"),
        ("version: 1\nrules: [unclosed\n", 3, 1, "the [ list ] that starts on line 2 is not closed or lacks a comma"),
        ("version: 1\nrules: *nope\n", 2, 8, "an alias (*name) that names no anchor (&name) defined before it"),
        ("version: 1\nrules:\n  - name: a\n    on\n    link: x\n", 5, 5, "a key without ':' after it"),
    ],
)
def test_a_yaml_syntax_error_says_what_is_wrong_where_and_shows_the_line(content, line, column, said):
    [problem] = problems_of(content)

    first, shown, caret = problem.splitlines()
    assert first.startswith(f"rules.yaml:{line}: not valid YAML at column {column}: ")
    assert said in first
    assert "<block" not in problem
    assert "expected" not in first
    source_line = (content.splitlines() + [""])[line - 1].replace("\t", " ")
    assert shown == f"  {line} | {source_line}"
    assert caret == f"  {' ' * len(str(line))} | {' ' * min(column - 1, len(source_line))}^"


def test_an_alias_of_a_mapping_that_merges_and_overrides_is_not_a_duplicate():
    # The merge is flattened in place while the first rule is built; the alias shares that node.
    rules = parse_rules(
        textwrap.dedent(
            """\
            version: 1
            rules:
              - name: base
                on: {source: datadog}
                link: &linkbase
                  relationship: RELATES_TO
                  parent: event
                  child: {type: CASE, id: OPS-1}
              - <<: {on: {source: datadog}}
                name: a
                link: &link
                  <<: *linkbase
                  relationship: CAUSES
              - name: b
                on: {source: datadog}
                link: *link
            """
        ),
        "rules.yaml",
    )

    assert [(rule.name, rule.link.relationship) for rule in rules.rules] == [
        ("base", "RELATES_TO"),
        ("a", "CAUSES"),
        ("b", "CAUSES"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "a: 1\nrules: [x, {y: 1}, [z]]\nb: 2\n",
        "? [rules]\n: [1]\nrules:\n- 1\n- 2\n",
        "rules: 3\n",
        "[1, 2]\n",
        "x: {rules: [1, 2, 3]}\nrules:\n  - &a {n: 1}\n  - *a\n",
        "rules: []\n",
        "rules:\n- [rules, [1, 2]]\n- {rules: [3]}\n",
    ],
)
def test_the_rules_counted_from_parser_events_are_those_a_composed_document_holds(text):
    # What lets a long file over the rule cap be refused before it is composed.
    loader = reader.Loader(text)
    try:
        node = reader._rules_node(loader.get_single_node())
    finally:
        loader.dispose()

    expected = None if node is None else (node[0], len(node[1].value))
    assert reader._rules_counted(text) == expected


def test_a_long_file_over_the_rule_cap_is_refused_before_a_node_is_built(monkeypatch):
    from tests import hostile_rules as hostile

    text = hostile.too_many_rules()
    monkeypatch.setattr(reader, "Loader", None)  # building a node would fail the test

    with pytest.raises(RulesError) as refused:
        reader.read_yaml(text, "rules.yaml")

    assert refused.value.problems == ["rules.yaml:2: the file holds 10,001 rules; a rules file may hold at most 10,000"]


# -- escapes YAML cannot hold: surrogates, as JSON writes characters past U+FFFF -----------------


def _escape_problem(escape: str) -> str:
    text = f'version: 1\nrules:\n  - name: r\n    link: {{relationship: CAUSES, parent: event, child: "{escape}"}}\n'
    return only_problem(text)


@given(
    character=st.integers(min_value=0x10000, max_value=0x10FFFF),
    upper=st.booleans(),
)
def test_a_json_style_surrogate_pair_is_refused_with_the_escape_to_write_instead(character, upper):
    high, low = 0xD800 + ((character - 0x10000) >> 10), 0xDC00 + ((character - 0x10000) & 0x3FF)
    pair = f"\\u{high:04x}\\u{low:04x}"
    pair = pair.upper().replace("\\U", "\\u") if upper else pair

    problem = _escape_problem(pair)

    assert f"not valid YAML at column 59: {pair} is a surrogate pair" in problem
    written = problem.split("write ", 1)[1].split(" ", 1)[0]
    assert written == f"\\U{character:08X}"
    assert written.encode().decode("unicode_escape") == chr(character)


@pytest.mark.parametrize("escape", ["\\ud83d", "\\uDE00", "\\ud83dx\\ude00", "\\ude00\\ud83d", "\\U0000d83d"])
def test_a_lone_surrogate_escape_is_refused_as_half_of_a_pair(escape):
    problem = _escape_problem(escape)

    assert "is half of a UTF-16 surrogate pair, which YAML cannot hold" in problem
    assert "\\U0001F600 for" in problem


def test_an_escape_past_the_last_unicode_character_says_so():
    assert "\\U00110000 is past the last Unicode character, \\U0010FFFF" in _escape_problem("\\U00110000")


def test_the_escape_hint_reads_the_pair_at_the_mark_after_non_ascii_text():
    # libyaml's mark counts characters, not UTF-8 bytes: the escape is read where it was written.
    problem = _escape_problem("é😀 \\ud83d\\ude00")

    assert "not valid YAML at column 62: \\ud83d\\ude00 is a surrogate pair" in problem
    assert "write \\U0001F600 or the character itself" in problem
