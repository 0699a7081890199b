"""From YAML to rules: every problem with file:line and the rule, templates and examples checked at
load (caselink/rules/validation.py)."""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml

from caselink.errors import RulesError
from caselink.events import EntityRef
from caselink.rules import LiveRules
from caselink.rules import PlannedLink
from caselink.rules import parse_rules
from handlers import REGISTRY
from tests.rule_files import INCIDENT
from tests.rule_files import INCIDENT_ID
from tests.rule_files import UUID
from tests.rule_files import a_rule
from tests.rule_files import an_event
from tests.rule_files import only_problem
from tests.rule_files import planned
from tests.rule_files import problems_of
from tests.rule_files import ruleset
from tests.rule_files import write_rules

# -- templates at load ---------------------------------------------------------------------


def template_problem(template: str) -> str:
    return only_problem(
        f"""\
        version: 1
        rules:
          - name: templated
            link:
              relationship: CAUSES
              parent: event
              child: {{type: CASE, id: {json.dumps(template)}}}
        """
    )


def test_a_template_name_that_is_not_an_event_field_is_an_error_at_load():
    problem = template_problem("{{ titel }}")

    assert problem.startswith("rules.yaml:7: rule 'templated': link.child.id: template uses undefined name 'titel'")
    assert "(did you mean 'title'?)" in problem


def test_a_template_that_does_not_parse_is_an_error_at_load():
    assert "link.child.id: template does not parse" in template_problem("{{ title ")


def test_a_template_with_an_unknown_filter_is_an_error_at_load():
    assert "No filter named 'nofilter'" in template_problem("{{ title | nofilter }}")


def test_a_template_may_use_names_it_sets_itself_and_jinja_globals():
    rules = ruleset(
        a_rule(
            link={
                "relationship": "CAUSES",
                "parent": "event",
                "child": {
                    "type": "CASE",
                    "id": "{% set key = title | upper %}{{ key }}{% for _ in range(0) %}{% endfor %}",
                },
            }
        )
    )

    assert planned(rules, an_event(title="ops-5")) == [f"INCIDENT:{INCIDENT_ID} CAUSES CASE:OPS-5"]


# -- examples ------------------------------------------------------------------------------


def test_examples_are_parsed_with_the_rules_single_source_and_normalised_refs():
    [rule] = ruleset(
        a_rule(
            on={"source": "datadog"},
            examples=[
                {
                    "payload": {"event": "incident.created", "incident": {"id": INCIDENT_ID, "title": "OPS-42"}},
                    "links": [
                        {"parent": f"incident:{INCIDENT_ID.upper()}", "relationship": "CAUSES", "child": "CASE:ops-42"}
                    ],
                },
                {"source": "datadog", "payload": {"event": "incident.created"}, "links": []},
            ],
        )
    ).rules

    first, second = rule.examples
    assert first.source == "datadog"
    assert first.payload == {"event": "incident.created", "incident": {"id": INCIDENT_ID, "title": "OPS-42"}}
    assert first.links == (PlannedLink(INCIDENT, "CAUSES", EntityRef("CASE", "OPS-42")),)
    assert first.line > 0
    assert second.links == ()


def test_an_example_needs_a_source_when_the_rule_names_no_single_source():
    problem = only_problem(
        """\
        version: 1
        rules:
          - name: anywhere
            link: {relationship: CAUSES, parent: event, child: {type: CASE, id: OPS-1}}
            examples:
              - payload: {event: incident.created}
                links: []
        """
    )

    assert problem == (
        "rules.yaml:6: rule 'anywhere': examples[0] needs source: (the rule's on.source names no single source)"
    )


@pytest.mark.parametrize(
    ("example", "message"),
    [
        (
            "{source: datadgo, payload: {}, links: []}",
            "examples[0].source: no source named 'datadgo' (did you mean 'datadog'?)",
        ),
        ("{source: datadog, links: []}", "examples[0].payload is missing"),
        ("{source: datadog, payload: {}}", "examples[0].links must be a list"),
        (
            "{source: datadog, payload: {}, links: [{parent: OPS-1, relationship: CAUSES, child: CASE:OPS-1}]}",
            "examples[0].links[0].parent: 'OPS-1' is not TYPE:ID",
        ),
        (
            "{source: datadog, payload: {}, links: [{parent: CASE:OPS-1, relationship: CAUSE, child: CASE:OPS-2}]}",
            "examples[0].links[0].relationship 'CAUSE' is not one of",
        ),
        (
            "{source: datadog, payload: {}, links: [{parent: CASE:OPS-1, relationship: CAUSES}]}",
            "examples[0].links[0].child is missing",
        ),
        ("{source: datadog, payload: {}, links: [], expect: []}", "unknown key 'expect' in examples[0]"),
    ],
)
def test_a_broken_example_is_reported_with_its_line_and_rule(example, message):
    problem = only_problem(
        f"""\
        version: 1
        rules:
          - name: exemplified
            link: {{relationship: CAUSES, parent: event, child: {{type: CASE, id: OPS-1}}}}
            examples:
              - {example}
        """
    )

    assert problem.startswith("rules.yaml:6: rule 'exemplified': ")
    assert message in problem


# -- validation: file, line, rule --------------------------------------------------------------


def test_an_unknown_rule_key_is_reported_with_file_line_rule_and_a_suggestion():
    problem = only_problem(
        """\
        version: 1
        rules:
          - name: typo
            whn:
              - {field: title, contains: x}
            link: {relationship: CAUSES, parent: event, child: {type: CASE, id: OPS-1}}
        """
    )

    assert problem.startswith("rules.yaml:4: rule 'typo': unknown key 'whn' in a rule (did you mean 'when'?)")


@pytest.mark.parametrize(
    ("written", "suggested"),
    [
        ("equal", "'equals'"),
        ("contians", "'contains'"),
        ("notin", "'not_in'"),
        ("startswith", "'starts_with'"),
        ("ignorecase", "'ignore_case'"),
        ("regex", "matches"),
        ("icontains", "contains with ignore_case: true"),
    ],
)
def test_an_unknown_operator_is_reported_with_a_suggestion(written, suggested):
    problem = only_problem(
        f"""\
        version: 1
        rules:
          - name: typo
            when:
              - field: title
                {written}: x
            link: {{relationship: CAUSES, parent: event, child: {{type: CASE, id: OPS-1}}}}
        """
    )

    assert problem.startswith(f"rules.yaml:6: rule 'typo': when[0]: unknown operator '{written}'")
    assert f"(did you mean {suggested}?)" in problem


@pytest.mark.parametrize(
    ("written", "suggested"),
    [("whn", "when"), ("descripton", "description"), ("exmples", "examples"), ("Link", "link")],
)
def test_unknown_rule_keys_get_the_closest_known_key(written, suggested):
    with pytest.raises(RulesError, match=re.escape(f"unknown key '{written}' in a rule (did you mean '{suggested}'?)")):
        ruleset(a_rule(**{written: 1}))


UNKNOWN_KEYS = [
    ({"on": {"source": "datadog", "kinds": ["x"]}}, "unknown key 'kinds' in on (did you mean 'kind'?)"),
    ({"link": {**a_rule()["link"], "relation": "x"}}, "unknown key 'relation' in link"),
    (
        {"link": {"relationship": "CAUSES", "parent": "event", "child": {"type": "CASE", "ids": "OPS-1"}}},
        "unknown key 'ids' in link.child (did you mean 'id'?)",
    ),
    (
        {
            "link": {
                "relationship": "CAUSES",
                "parent": "event",
                "child": {"type": "CASE", "find": {"in": ["title"], "pattern": "x", "flags": "i"}},
            }
        },
        "unknown key 'flags' in link.child.find",
    ),
    ({"when": {"al": [{"field": "title", "exists": True}]}}, "when: unknown key 'al' (did you mean 'all'?)"),
    ({"when": [{"feild": "title", "exists": True}]}, "when[0]: unknown key 'feild' (did you mean 'field'?)"),
]


@pytest.mark.parametrize(("overrides", "expected"), UNKNOWN_KEYS)
def test_unknown_keys_are_rejected_at_every_level(overrides, expected):
    with pytest.raises(RulesError) as caught:
        ruleset(a_rule(**overrides))

    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


def test_a_bad_regex_in_matches_is_reported_where_it_is_written():
    problem = only_problem(
        """\
        version: 1
        rules:
          - name: regex
            when:
              - field: title
                matches: "(unclosed"
            link: {relationship: CAUSES, parent: event, child: {type: CASE, id: OPS-1}}
        """
    )

    assert problem.startswith("rules.yaml:6: rule 'regex': when[0]: bad regular expression '(unclosed'")


def test_a_bad_regex_in_find_is_reported_where_it_is_written():
    problem = only_problem(
        """\
        version: 1
        rules:
          - name: regex
            link:
              relationship: CAUSES
              parent: event
              child:
                type: CASE
                find:
                  in: [title]
                  pattern: "[A-Z"
        """
    )

    assert problem.startswith("rules.yaml:11: rule 'regex': link.child.find.pattern: bad regular expression")


@pytest.mark.parametrize(
    ("relationship", "expected"),
    [
        ("CAUSE", "(did you mean 'CAUSES'?)"),
        ("causes", "(did you mean 'CAUSES'?)"),
        ("FIXES", "is not one of RELATES_TO"),
    ],
)
def test_a_bad_relationship_is_reported_with_a_suggestion(relationship, expected):
    problem = only_problem(
        f"""\
        version: 1
        rules:
          - name: rel
            link:
              relationship: {relationship}
              parent: event
              child: {{type: CASE, id: OPS-1}}
        """
    )

    assert problem.startswith(f"rules.yaml:5: rule 'rel': link.relationship '{relationship}' is not one of")
    assert expected in problem


@pytest.mark.parametrize(("entity", "expected"), [("case", "(did you mean 'CASE'?)"), ("ISSUE", "is not one of CASE")])
def test_a_bad_entity_type_is_reported_with_a_suggestion(entity, expected):
    problem = only_problem(
        f"""\
        version: 1
        rules:
          - name: ent
            link:
              relationship: CAUSES
              parent: event
              child: {{type: {entity}, id: OPS-1}}
        """
    )

    assert problem.startswith(f"rules.yaml:7: rule 'ent': link.child.type '{entity}' is not one of")
    assert expected in problem


def test_a_duplicate_rule_name_is_reported_with_both_lines():
    problems = problems_of(
        """\
        version: 1
        rules:
          - name: twin
            link: {relationship: CAUSES, parent: event, child: {type: CASE, id: OPS-1}}
          - name: twin
            link: {relationship: CAUSES, parent: event, child: {type: CASE, id: OPS-2}}
        """
    )

    assert problems == ["rules.yaml:5: rule 'twin': rule name 'twin' is already used at line 3"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("\x00\x01\x02 binary", "rules.yaml:1: not a YAML text file"),
        ("version: 1\nrules: [unclosed\n", "rules.yaml:3: not valid YAML"),
        ("version: 1\n  rules: - x\n", "rules.yaml:2: not valid YAML"),
        ("just some words\n", "rules.yaml:1: the file must be a mapping with version: 1 and rules:"),
        ("- a\n- b\n", "rules.yaml:1: the file must be a mapping with version: 1 and rules:"),
    ],
)
def test_a_file_that_is_not_a_rules_document_is_reported_with_a_line(content, expected):
    [problem] = problems_of(content)

    assert problem.startswith(expected)


@pytest.mark.parametrize("content", ["", "\n\n", "# only a comment\n"])
def test_an_empty_file_is_reported(content):
    assert problems_of(content) == ["rules.yaml:1: the file is empty; it needs version: 1 and rules:"]


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("2", "version must be 1, not 2"),
        ("'1'", "version must be 1, not '1'"),
        ("true", "version must be 1, not True"),
        ("1.5", "version must be 1, not 1.5"),
    ],
)
def test_a_wrong_version_is_reported(version, expected):
    assert problems_of(f"version: {version}\nrules: []\n") == [f"rules.yaml:1: {expected}"]


def test_a_missing_version_or_rules_is_reported():
    assert problems_of("rules: []\n") == ["rules.yaml:1: version: 1 is missing"]
    assert problems_of("version: 1\n") == ["rules.yaml:1: rules: is missing (a list of rules)"]
    assert problems_of("version: 1\nrules: {a: 1}\n") == ["rules.yaml:2: rules must be a list"]


def test_an_unknown_top_level_key_is_reported_with_a_suggestion():
    [problem] = problems_of("version: 1\nrule: []\nrules: []\n")

    assert problem.startswith("rules.yaml:2: unknown key 'rule' in the file (did you mean 'rules'?)")


def test_a_rule_without_a_usable_name_is_named_by_its_position():
    problems = problems_of(
        """\
        version: 1
        rules:
          - link: {relationship: CAUSES, parent: event, child: {type: CASE, id: OPS-1}}
            stopp: true
          - name: "has spaces"
            link: {relationship: CAUSES, parent: event, child: {type: CASE, id: OPS-1}}
        """
    )

    assert problems[0] == "rules.yaml:3: rules[0]: the rule has no name:"
    assert problems[1].startswith("rules.yaml:4: rules[0]: unknown key 'stopp' in a rule (did you mean 'stop'?)")
    assert problems[2] == (
        "rules.yaml:5: rules[1]: a rule name has letters, digits, '.', '_' and '-' (got 'has spaces')"
    )


def test_a_rule_without_link_is_reported():
    problem = only_problem(
        """\
        version: 1
        rules:
          - name: linkless
        """
    )

    assert problem == "rules.yaml:3: rule 'linkless': link: is missing (relationship, parent, child)"


def test_every_problem_in_a_file_is_reported_at_once_in_order():
    problems = problems_of(
        """\
        version: 1
        rules:
          - name: one
            when:
              - {field: titel, equals: x}
            link: {relationship: CAUSES, parent: event, child: {type: CASE, id: OPS-1}}
          - name: two
            link: {relationship: CAUSE, parent: event, child: {type: CASE, id: OPS-1}}
          - name: three
            mode: shadow
            link: {relationship: CAUSES, parent: event, child: {type: CASE, id: OPS-1}}
        """
    )

    assert [problem.split(" ", 3)[:3] for problem in problems] == [
        ["rules.yaml:5:", "rule", "'one':"],
        ["rules.yaml:8:", "rule", "'two':"],
        ["rules.yaml:10:", "rule", "'three':"],
    ]


BROKEN_CONDITIONS = [
    ("{field: title, equals: x, contains: y}", "a condition takes one operator, not equals, contains"),
    ("{field: title}", "a condition needs one operator"),
    ("{field: title, in: x}", "in takes a non-empty list of values"),
    ("{field: title, not_in: []}", "not_in takes a non-empty list of values"),
    ("{field: title, exists: yes}", "exists takes true or false, not 'yes'"),
    ("{field: title, equals: [a, b]}", "equals takes a single value (use in: for a list)"),
    ("{field: title, equals: null}", "for a missing field use exists: false"),
    ("{field: title, contains: ''}", "contains takes a non-empty text value"),
    ("{field: title, gt: [1]}", "gt takes a number or a text value"),
    ("{field: title, matches: 5}", "matches takes a regular expression as text"),
    ("{field: title, equals: x, ignore_case: 1}", "ignore_case must be true or false"),
    ("{field: titel, equals: x}", "field 'titel' does not start with an event field"),
    ("{field: 'title..x', equals: x}", "cannot read field path 'title..x' at character 6"),
    ("{field: 5, equals: x}", "field must be a dotted path"),
    ("[title, x]", "when[0] must be a condition"),
]


@pytest.mark.parametrize(("written", "expected"), BROKEN_CONDITIONS)
def test_a_broken_condition_is_reported_with_file_line_and_rule(written, expected):
    problem = only_problem(
        f"""\
        version: 1
        rules:
          - name: cond
            when:
              - {written}
            link: {{relationship: CAUSES, parent: event, child: {{type: CASE, id: OPS-1}}}}
        """
    )

    assert problem.startswith("rules.yaml:5: rule 'cond': when[0")
    assert expected in problem


BROKEN_LINKS = [
    ("{relationship: CAUSES, parent: event}", "link.child is missing"),
    ("{relationship: CAUSES, parent: events, child: {type: CASE, id: OPS-1}}", "link.parent must be event"),
    (
        "{relationship: CAUSES, parent: event, child: {type: CASE, id: OPS-1, find: {in: [title], pattern: x}}}",
        "needs exactly one of id:",
    ),
    ("{relationship: CAUSES, parent: event, child: {id: OPS-1}}", "link.child.type is missing"),
    (
        "{relationship: CAUSES, parent: event, child: {type: CASE, find: {in: 5, pattern: x}}}",
        "find.in must name the fields",
    ),
    (
        "{relationship: CAUSES, parent: event, child: {type: CASE, find: {in: [titel], pattern: x}}}",
        "did you mean 'title'?",
    ),
    (
        "{relationship: CAUSES, parent: event, child: {type: CASE, find: {in: [title]}}}",
        "find.pattern must be a regular expression",
    ),
    ("{relationship: CAUSES, parent: event, child: {type: CASE, find: [title]}}", "find must be a mapping"),
    ("{relationship: CAUSES, parent: event, child: {type: CASE, id: 42}}", "link.child.id must be text"),
    ("[CAUSES, event]", "link must be a mapping"),
]


@pytest.mark.parametrize(("written", "expected"), BROKEN_LINKS)
def test_a_broken_link_is_reported_with_file_line_and_rule(written, expected):
    problem = only_problem(
        f"""\
        version: 1
        rules:
          - name: linked
            link: {written}
        """
    )

    assert problem.startswith("rules.yaml:4: rule 'linked': ")
    assert expected in problem


PAGE_CHILD = {"type": "PAGE", "find": {"in": ["title"], "pattern": UUID}}


@pytest.mark.parametrize(
    ("on", "child", "about"),
    [
        ({"source": "datadog", "kind": "page.escalated"}, PAGE_CHILD, "PAGE"),
        ({"source": "datadog", "kind": "incident.*"}, {**PAGE_CHILD, "type": "INCIDENT"}, "INCIDENT"),
        ({"source": "datadog", "kind": ["incident.created", "page.escalated"]}, PAGE_CHILD, "INCIDENT or PAGE"),
        ({"source": ["datadog", "pagerduty"], "kind": "page.escalated"}, PAGE_CHILD, "PAGE or no entity"),
    ],
)
def test_a_rule_whose_event_side_can_never_meet_a_case_is_refused_with_its_line(on, child, about):
    rule = a_rule("never-case", on=on, link={"relationship": "RELATES_TO", "parent": "event", "child": child})
    text = yaml.safe_dump({"version": 1, "rules": [rule]}, sort_keys=False)

    with pytest.raises(RulesError) as caught:
        parse_rules(text, "rules.yaml", sources=tuple(REGISTRY))

    [problem] = caught.value.problems
    assert problem.startswith("rules.yaml:4: rule 'never-case': link can never have a CASE side (")  # link:
    assert f"are about {about};" in problem
    assert problem.endswith("Datadog requires at least one side of a link to be a CASE")


@pytest.mark.parametrize(
    ("on", "child"),
    [
        ({"source": "datadog", "kind": "case.created"}, PAGE_CHILD),
        ({"source": "datadog"}, PAGE_CHILD),
        ({"source": "generic", "kind": "page.escalated"}, PAGE_CHILD),
        ({"kind": "page.escalated"}, PAGE_CHILD),
        ({"source": "datadog", "kind": "page.escalated"}, {"type": "CASE", "id": "OPS-1"}),
        ({"source": "datadog", "kind": "*.escalated"}, PAGE_CHILD),
        ({"source": "pagerduty", "kind": "incident.triggered"}, PAGE_CHILD),
    ],
)
def test_a_rule_whose_event_side_may_meet_a_case_is_accepted(on, child):
    rule = a_rule("maybe-case", on=on, link={"relationship": "RELATES_TO", "parent": "event", "child": child})
    text = yaml.safe_dump({"version": 1, "rules": [rule]}, sort_keys=False)

    assert [rule.name for rule in parse_rules(text, "rules.yaml", sources=tuple(REGISTRY)).rules] == ["maybe-case"]


def test_a_rule_that_can_never_meet_a_case_is_not_loaded_by_a_running_service(tmp_path):
    path = tmp_path / "rules.yaml"
    write_rules(path, "good")
    live = LiveRules(path, sources=tuple(REGISTRY), check_every=0)
    rule = a_rule(
        "never-case",
        on={"source": "datadog", "kind": "page.escalated"},
        link={"relationship": "RELATES_TO", "parent": "event", "child": PAGE_CHILD},
    )
    path.write_text(yaml.safe_dump({"version": 1, "rules": [rule]}, sort_keys=False), encoding="utf-8")
    os.utime(path, ns=(path.stat().st_mtime_ns + 2_000_000_000,) * 2)

    assert [rule.name for rule in live.current().rules] == ["good"]
    assert "link can never have a CASE side" in live.error.problems[0]


def test_constant_ids_are_not_templates_so_a_file_may_link_a_thousand_rules_to_a_thousand_cases():
    from caselink.templates import MAX_TEMPLATES_PER_FILE

    count = MAX_TEMPLATES_PER_FILE * 5
    rules = ruleset(
        *(
            a_rule(
                f"r{n}", link={"relationship": "CAUSES", "parent": "event", "child": {"type": "CASE", "id": f"OPS-{n}"}}
            )
            for n in range(count)
        )
    )

    assert len(rules.rules) == count
    # Each rule plans its own case (up to the links one event may plan).
    links = rules.evaluate(an_event(title="x")).links
    assert [link.child.id for link in links[:3]] == ["OPS-0", "OPS-1", "OPS-2"]
    assert len({link.child.id for link in links}) == len(links) == 100


def test_a_rule_of_more_conditions_than_a_rule_may_hold_is_refused_with_the_count_and_a_hint():
    from caselink.rules.model import MAX_CONDITIONS_PER_RULE

    nested = {"any": [{"field": "title", "contains": f"x{n}"} for n in range(MAX_CONDITIONS_PER_RULE)]}
    at_cap = [{"field": "title", "contains": f"x{n}"} for n in range(MAX_CONDITIONS_PER_RULE)]

    assert ruleset(a_rule(when=at_cap)).rules[0].when.size == MAX_CONDITIONS_PER_RULE
    problem = only_problem(yaml.safe_dump({"version": 1, "rules": [a_rule(when=[nested, at_cap[0]])]}))
    assert f"when holds {MAX_CONDITIONS_PER_RULE + 1} conditions; a rule may hold at most" in problem
    assert "one `in` or `not_in` takes a list of values" in problem


@pytest.mark.parametrize(("levels", "refused"), [(16, False), (17, True), (260, True)])
def test_groups_nest_at_most_sixteen_deep_and_deeper_is_refused_with_a_line_not_a_traceback(levels, refused):
    from tests.hostile_rules import deeply_nested_when

    text = deeply_nested_when(levels)

    if not refused:
        assert len(parse_rules(text, "rules.yaml", sources=("datadog",)).rules) == 1
        return
    problem = only_problem(text)
    assert problem.startswith("rules.yaml:")
    assert "groups nest more than 16 deep" in problem or "deeper than caselink reads" in problem


@pytest.mark.parametrize("value", ['"a\\0b"', '["x", "a\\0b"]'])
def test_a_condition_value_holding_nul_is_refused_at_load(value):
    operator = "in" if value.startswith("[") else "contains"
    text = f"version: 1\nrules:\n  - name: r\n    when: [{{field: title, {operator}: {value}}}]\n" + (
        "    link: {relationship: CAUSES, parent: event, child: {type: CASE, id: OPS-1}}\n"
    )

    assert f"{operator}'s value holds NUL" in only_problem(text)


def test_a_constant_id_longer_than_the_links_table_holds_is_refused_at_load():
    # 256 characters passed and then every matching webhook was a 400 on PostgreSQL (varchar(255)).
    link = {"relationship": "CAUSES", "parent": "event", "child": {"type": "CASE", "id": "OPS-" + "9" * 252}}

    assert "an id may hold at most 255" in only_problem(yaml.safe_dump({"version": 1, "rules": [a_rule(link=link)]}))
    assert ruleset(a_rule(link={**link, "child": {"type": "CASE", "id": "OPS-" + "9" * 251}})).rules
