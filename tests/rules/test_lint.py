"""The rules lint (`rules check`): shadowed rules, duplicate work, kinds no sender produces, rules without examples."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from caselink.events import Event
from caselink.rules import parse_rules
from caselink.rules.lint import covers
from caselink.rules.lint import implies
from caselink.rules.lint import lint
from caselink.rules.lint import overlaps
from handlers import REGISTRY
from tests.servers import ROOT

KINDS = {name: handler.KINDS for name, handler in REGISTRY.items()}
LINK = "link: {relationship: RELATES_TO, parent: {type: CASE, id: OPS-1}, child: {type: CASE, id: OPS-2}}"
OTHER_CHILD = LINK.replace("OPS-2", "OPS-3")
OTHER_RELATIONSHIP = LINK.replace("RELATES_TO", "CAUSES")
P1 = "when: [{field: priority, equals: P1}]"
EXAMPLES = "examples: [{payload: {event: incident.created}, links: []}]"


def rules(body: str, *, sources: Any = tuple(KINDS)) -> Any:
    return parse_rules("version: 1\nrules:\n" + textwrap.indent(textwrap.dedent(body), "  "), "t.yaml", sources=sources)


def findings(body: str, check: str, **options: Any) -> list[str]:
    return [str(found) for found in lint(rules(body, **options), KINDS) if found.check == check]


# -- shadowed ---------------------------------------------------------------------------


SHADOWING_STOP_RULE = f"""\
- name: every-datadog-sev1
  on: {{source: datadog}}
  when: [{{field: severity, in: [SEV-1, SEV-2]}}]
  stop: true
  {LINK}
"""


def test_a_rule_behind_a_stop_rule_that_matches_all_its_events_is_shadowed():
    found = findings(
        SHADOWING_STOP_RULE
        + """\
- name: sev1-incidents-about-db
  on: {source: datadog, kind: [incident.created, incident.*]}
  when:
    - {field: title, contains: db}
    - {field: severity, equals: SEV-1}
  link: {relationship: CAUSES, parent: event, child: {type: CASE, id: OPS-9}}
""",
        "shadowed",
    )

    assert found == [
        "t.yaml:8: rule 'sev1-incidents-about-db': warning: can never fire: the earlier rule 'every-datadog-sev1'"
        " (line 3) has stop: true and matches every event this rule selects"
    ]


@pytest.mark.parametrize(
    "later",
    [
        # Events the stop rule does not take: other severities, other sources, any kind of source.
        "on: {source: datadog}\n  when: [{field: severity, in: [SEV-1, SEV-3]}]",
        "on: {source: [datadog, pagerduty]}\n  when: [{field: severity, equals: SEV-1}]",
        "when: [{field: severity, equals: SEV-1}]",
        "on: {source: datadog}\n  when: {any: [{field: severity, equals: SEV-1}, {field: title, contains: db}]}",
    ],
)
def test_a_rule_with_events_the_stop_rule_does_not_take_is_not_shadowed(later):
    assert findings(SHADOWING_STOP_RULE + f"- name: later\n  {later}\n  {LINK}\n", "shadowed") == []


@pytest.mark.parametrize("change", ["stop: false", "enabled: false"])
def test_only_an_enabled_stop_rule_shadows(change):
    first = SHADOWING_STOP_RULE.replace("stop: true", change)

    assert findings(first + f"- name: later\n  on: {{source: datadog}}\n  {LINK}\n", "shadowed") == []


# -- duplicate work ---------------------------------------------------------------------


def test_two_rules_planning_the_same_link_for_the_same_events_are_duplicates():
    found = findings(
        f"""\
- name: urgent-pages
  on: {{source: [pagerduty, opsgenie], kind: [incident.triggered, alert.create]}}
  when: [{{field: priority, in: [P1, P2]}}]
  {LINK}
- name: urgent-pages-copy
  mode: dry-run
  on: {{source: pagerduty, kind: incident.*}}
  when: [{{field: priority, equals: P1}}, {{field: title, contains: db}}]
  {LINK}
""",
        "duplicate",
    )

    assert found == [
        "t.yaml:7: rule 'urgent-pages-copy': warning: plans the same RELATES_TO link between the same refs"
        " as rule 'urgent-pages' (line 3) for the same events; one of them is probably a copy"
    ]


@pytest.mark.parametrize(
    "second",
    [
        # Another child, another relationship, other events, conditions that split the events, or switched off.
        f"on: {{source: pagerduty}}\n  {OTHER_CHILD}",
        f"on: {{source: pagerduty}}\n  {OTHER_RELATIONSHIP}",
        f"on: {{source: opsgenie}}\n  {LINK}",
        f"on: {{source: pagerduty, kind: incident.resolved}}\n  {LINK}",
        f"on: {{source: pagerduty}}\n  when: [{{field: priority, equals: P3}}]\n  {LINK}",
        f"enabled: false\n  on: {{source: pagerduty}}\n  {LINK}",
    ],
)
def test_rules_that_never_plan_the_same_link_for_the_same_event_are_not_duplicates(second):
    first = f"- name: first\n  on: {{source: pagerduty, kind: incident.triggered}}\n  {P1}\n  {LINK}\n"

    assert findings(first + f"- name: second\n  {second}\n", "duplicate") == []


def test_a_rule_after_a_stop_rule_does_not_duplicate_its_work():
    first = f"- name: first\n  on: {{source: pagerduty}}\n  {P1}\n  stop: true\n  {LINK}\n"

    assert findings(first + f"- name: second\n  on: {{source: pagerduty}}\n  {LINK}\n", "duplicate") == []


# -- kinds and sources ------------------------------------------------------------------


def test_a_kind_no_selected_sender_produces_is_a_warning_per_kind():
    found = findings(
        f"""\
- name: alerts
  on: {{source: [alertmanager, grafana], kind: [alert.firing, alert.resolvd, incident.created]}}
  {LINK}
- name: pagerduty-with-opsgenie-kinds
  on: {{source: pagerduty, kind: alert.*}}
  {LINK}
""",
        "kind",
    )

    assert found == [
        "t.yaml:3: rule 'alerts': warning: on.kind 'alert.resolvd': no handler produces this kind for sources"
        " alertmanager, grafana (did you mean 'alert.resolved'?)",
        "t.yaml:3: rule 'alerts': warning: on.kind 'incident.created': no handler produces this kind for sources"
        " alertmanager, grafana (it produces alert.firing, alert.resolved)",
        "t.yaml:6: rule 'pagerduty-with-opsgenie-kinds': warning: on.kind 'alert.*': no handler produces this kind"
        " for source pagerduty (it produces incident.*, service.*)",
    ]


@pytest.mark.parametrize(
    "on",
    [
        "{source: alertmanager, kind: [alert.firing, 'alert.*', unrecognised]}",
        "{source: opsgenie, kind: alert.page_payments_on_call}",  # a custom action
        "{source: datadog, kind: deploy.finished}",  # a template of the user's own
        "{source: generic, kind: anything.at_all}",
        "{source: [alertmanager, generic], kind: incident.created}",  # one of the sources may send it
        "{kind: incident.created}",
        "{source: pagerduty, kind: 'incident.responder.*'}",
    ],
)
def test_a_kind_some_selected_sender_may_produce_is_no_warning(on):
    found = lint(rules(f"- name: r\n  on: {on}\n  {LINK}\n"), KINDS)

    assert [str(item) for item in found if item.check == "kind" and item.level == "warning"] == []


def test_a_kind_a_sender_may_produce_but_does_not_document_is_a_note():
    found = findings(f"- name: r\n  on: {{source: pagerduty, kind: incident.created}}\n  {LINK}\n", "kind")

    assert found == [
        "t.yaml:3: rule 'r': note: on.kind 'incident.created' is not among the kinds source pagerduty documents"
        " (docs/senders.md, Event kinds); it may still come from a name of your own or a type the sender added later"
    ]


@pytest.mark.parametrize(
    ("kind", "glob_set"),
    [("'alert.No[ -]Data'", "[ -]"), ("'alert.no[-/]data'", "[-/]"), ("'incident.[ -,]*'", "[ -,]")],
)
def test_an_on_kind_glob_whose_set_holds_no_character_of_a_canonical_kind_is_a_warning(kind, glob_set):
    found = findings(f"- name: r\n  on: {{source: datadog, kind: {kind}}}\n  {LINK}\n", "kind")

    assert len(found) == 1
    assert f"can match no canonical kind: its set {glob_set} holds only characters" in found[0]
    assert ": warning: " in found[0]


@pytest.mark.parametrize("kind", ["'alert.no[_-]data'", "'alert.[!-]*'", "'alert.re[ -_]triggered'", "'alert.[a-z]*'"])
def test_an_on_kind_glob_whose_set_may_hold_a_canonical_character_is_no_such_warning(kind):
    found = findings(f"- name: r\n  on: {{source: datadog, kind: {kind}}}\n  {LINK}\n", "kind")

    assert not any("can match no canonical kind" in item for item in found)


@pytest.mark.parametrize(
    ("condition", "written", "canonical"),
    [
        ("{field: kind, equals: alert.No Data}", "alert.No Data", "alert.no_data"),
        ("{field: kind, not_equals: Alert.Triggered}", "Alert.Triggered", "alert.triggered"),
        ("{field: kind, in: [alert.no_data, alert.Re-Triggered]}", "alert.Re-Triggered", "alert.re_triggered"),
        ("{field: kind, not_in: [incident.Created]}", "incident.Created", "incident.created"),
        ("{field: kind, equals: alert.no data, ignore_case: true}", "alert.no data", "alert.no_data"),
    ],
)
def test_a_when_condition_on_kind_with_a_value_not_in_canonical_form_is_a_warning(condition, written, canonical):
    found = findings(f"- name: r\n  on: {{source: datadog}}\n  when: {{any: [{condition}]}}\n  {LINK}\n", "kind")

    assert len(found) == 1
    assert found[0].startswith("t.yaml:3: rule 'r': warning: ")
    assert f"{written!r} never matches; write {canonical!r}" in found[0]


@pytest.mark.parametrize(
    "condition",
    [
        "{field: kind, equals: alert.no_data}",
        "{field: kind, in: [alert.no_data, alert.triggered]}",
        "{field: kind, equals: Alert.No_Data, ignore_case: true}",
        "{field: title, equals: alert.No Data}",
        "{field: kind, contains: No}",
    ],
)
def test_a_when_condition_on_kind_that_can_match_is_no_warning(condition):
    assert findings(f"- name: r\n  on: {{source: datadog}}\n  when: [{condition}]\n  {LINK}\n", "kind") == []


def test_an_on_source_that_selects_no_source_is_a_warning():
    # Loading with the sources refuses such a file; the lint says it of rules loaded without them.
    body = f"- name: r\n  on: {{source: [pagerduty, 'zen*']}}\n  {LINK}\n"

    assert findings(body, "source", sources=None) == [
        "t.yaml:3: rule 'r': warning: on.source 'zen*' selects no source"
        " (sources: datadog, pagerduty, opsgenie, alertmanager, grafana, generic)"
    ]
    assert findings(body.replace("zen*", "gra*"), "source", sources=None) == []


# -- examples ---------------------------------------------------------------------------


def test_a_rule_without_examples_gets_a_note_and_one_with_examples_none():
    found = lint(
        rules(f"- name: bare\n  {LINK}\n- name: tried\n  on: {{source: datadog}}\n  {OTHER_CHILD}\n  {EXAMPLES}\n"),
        KINDS,
    )

    assert [str(item) for item in found] == [
        "t.yaml:3: rule 'bare': note: has no examples; `rules test` cannot check it"
    ]


# -- rules check ------------------------------------------------------------------------


def test_the_default_rules_pass_rules_check_strict(runner):
    result = runner.invoke(args=["rules", "check", "--strict", str(ROOT / "rules.yaml")])

    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    assert "note" not in result.output


def test_rules_check_prints_warnings_and_only_strict_fails_on_them(runner, tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(
        f"version: 1\nrules:\n  - name: r\n    on: {{source: grafana, kind: incident.created}}\n    {LINK}\n"
    )

    relaxed = runner.invoke(args=["rules", "check", str(path)])
    strict = runner.invoke(args=["rules", "check", "--strict", str(path)])

    assert relaxed.exit_code == 0
    assert strict.exit_code == 1
    assert f"{path}:3: rule 'r': warning: on.kind 'incident.created': no handler produces" in strict.output
    assert f"{path}:3: rule 'r': note: has no examples" in strict.output
    assert strict.output.rstrip().endswith("1 rules (1 enabled), 1 warning(s), 1 note(s)")


def test_notes_alone_do_not_fail_rules_check_strict(runner, tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(f"version: 1\nrules:\n  - name: r\n    {LINK}\n")

    result = runner.invoke(args=["rules", "check", "--strict", str(path)])

    assert result.exit_code == 0, result.output
    assert "note: has no examples" in result.output


def test_a_kind_not_written_canonically_fails_rules_check_strict(runner, tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(
        f"version: 1\nrules:\n  - name: r\n    on: {{kind: Incident.Created}}\n    {LINK}\n    {EXAMPLES}\n"
    )

    assert runner.invoke(args=["rules", "check", "--strict", str(path)]).exit_code == 1


# -- never a false "shadowed" -------------------------------------------------------------

SOURCES = ("datadog", "pagerduty", "alertmanager")
UNIVERSE = {source: KINDS[source] for source in SOURCES}
CONDITIONS = [
    {"field": "severity", "equals": "SEV-1"},
    {"field": "severity", "in": ["SEV-1", "SEV-2"]},
    {"field": "severity", "in": ["SEV-1"]},
    {"field": "severity", "not_in": ["SEV-3", "SEV-4"]},
    {"field": "severity", "not_equals": "SEV-3"},
    {"field": "severity", "equals": "sev-1", "ignore_case": True},
    {"field": "severity", "in": ["sev-1", "SEV-2"], "ignore_case": True},
    {"field": "severity", "in": ["sev-1", "SEV-2"]},
    {"field": "title", "contains": "db"},
    {"field": "title", "matches": "^DB"},
    {"field": "tags.service", "equals": "api"},
    {"field": "tags.service", "exists": False},
    {"field": "priority", "in": [1, "P1"]},
    {"field": "kind", "starts_with": "incident."},
]
condition = st.sampled_from(CONDITIONS)
group = st.builds(
    lambda mode, items: {mode: items},
    st.sampled_from(["all", "any", "none"]),
    st.lists(condition, min_size=1, max_size=2),
)
when = st.one_of(st.none(), st.lists(st.one_of(condition, group), min_size=1, max_size=3))
rule = st.fixed_dictionaries(
    {
        "sources": st.one_of(
            st.none(), st.lists(st.sampled_from([*SOURCES, "*", "pager*", "[ad]*"]), min_size=1, max_size=2)
        ),
        "kinds": st.one_of(
            st.none(),
            st.lists(
                st.sampled_from(
                    [
                        "incident.created",
                        "incident.triggered",
                        "alert.firing",
                        "incident.*",
                        "alert.*",
                        "*",
                        "incident.created*",
                        "inc*",
                    ]
                ),
                min_size=1,
                max_size=2,
            ),
        ),
        "when": when,
        "stop": st.booleans(),
        "enabled": st.sampled_from([True, True, True, False]),
    }
)
event = st.builds(
    lambda source, kind, severity, title, service, priority: Event(
        source, kind, "k", title=title, severity=severity, priority=priority, tags=service
    ),
    st.sampled_from(SOURCES),
    st.sampled_from(
        [
            "incident.created",
            "incident.created.again",
            "incident.triggered",
            "alert.firing",
            "alert.resolved",
            "case.created",
        ]
    ),
    st.sampled_from(["SEV-1", "sev-1", "SEV-2", "SEV-3", ""]),
    st.sampled_from(["DB down", "db down", "web slow", ""]),
    st.sampled_from([{}, {"service": ["api"]}, {"service": ["web", "API"]}, {"service": ["SEV-2", "sev-1"]}]),
    st.sampled_from(["P1", "1", "P2", ""]),
)


def ruleset_of(drawn: list[dict[str, Any]]) -> Any:
    document = {"version": 1, "rules": []}
    for index, item in enumerate(drawn):
        raw: dict[str, Any] = {"name": f"r{index}", "stop": item["stop"], "enabled": item["enabled"]}
        on = {key: value for key, value in (("source", item["sources"]), ("kind", item["kinds"])) if value is not None}
        if on:
            raw["on"] = on
        if item["when"] is not None:
            raw["when"] = item["when"]
        raw["link"] = {
            "relationship": "RELATES_TO",
            "parent": {"type": "CASE", "id": "OPS-1"},
            # Two children, so that some rules plan the same link and some do not.
            "child": {"type": "CASE", "id": f"OPS-{2 + index % 3 // 2}"},
        }
        document["rules"].append(raw)
    return parse_rules(json.dumps(document), "t.yaml", sources=SOURCES)


def selects(rule: Any, event: Event) -> bool:
    return rule.applies_to(event) is None and (rule.when is None or rule.when.first_failure(event.fields()) is None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rule, min_size=2, max_size=4), st.lists(event, min_size=1, max_size=12))
def test_a_rule_reported_shadowed_never_fires_for_any_event(drawn, events):
    ruleset = ruleset_of(drawn)
    shadowed = {found.rule for found in lint(ruleset, UNIVERSE) if found.check == "shadowed"}

    for item in events:
        outcomes = {outcome.rule: outcome.outcome for outcome in ruleset.evaluate(item).outcomes}
        assert not [name for name in shadowed if outcomes[name] == "matched"], (item, shadowed)
    # The lint's "covers" itself: whatever the narrow rule selects, the wide one selects too.
    for wide in ruleset.rules:
        for narrow in ruleset.rules:
            if covers(wide, narrow, UNIVERSE):
                assert all(selects(wide, item) for item in events if selects(narrow, item)), (wide.name, narrow.name)


# Small on purpose, so that drawn conditions often share a field and values: where implication is decided.
simple_condition = st.builds(
    lambda field, operator, values, ignore_case: {
        "field": field,
        operator: values if operator in ("in", "not_in") else values[0],
        **({"ignore_case": True} if ignore_case else {}),
    },
    st.sampled_from(["severity", "tags.service"]),
    st.sampled_from(["equals", "not_equals", "in", "not_in", "contains"]),
    st.lists(st.sampled_from(["SEV-1", "sev-1", "SEV-2"]), min_size=1, max_size=2, unique=True),
    st.booleans(),
)
simple_when = st.lists(simple_condition, min_size=1, max_size=3)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(simple_when, st.data(), st.lists(event, min_size=1, max_size=12))
def test_conditions_the_lint_says_are_implied_hold_whenever_the_implying_ones_do(have, data, events):
    # The conditions needed are on the fields of those given, with any operator, values and case.
    fields = st.sampled_from([condition["field"] for condition in have])
    need = data.draw(
        st.lists(
            st.builds(lambda item, field: {**item, "field": field}, simple_condition, fields), min_size=1, max_size=2
        )
    )
    drawn = [{"sources": None, "kinds": None, "when": item, "stop": False, "enabled": True} for item in (have, need)]
    narrow, wide = ruleset_of(drawn).rules

    if implies(narrow.when, wide.when):
        assert all(selects(wide, item) for item in events if selects(narrow, item))


@pytest.mark.parametrize(
    ("have", "need", "implied"),
    [
        ({"equals": "SEV-1"}, {"in": ["SEV-1", "SEV-2"]}, True),
        ({"in": ["SEV-1"]}, {"in": ["SEV-1", "SEV-2"]}, True),
        ({"in": ["SEV-1", "SEV-2"]}, {"in": ["SEV-1"]}, False),
        ({"not_in": ["SEV-3", "SEV-4"]}, {"not_equals": "SEV-3"}, True),
        ({"not_in": ["SEV-3", "SEV-4"]}, {"not_in": ["SEV-4"]}, True),
        ({"not_in": ["SEV-3"]}, {"not_in": ["SEV-3", "SEV-4"]}, False),
        ({"in": ["sev-1"], "ignore_case": True}, {"in": ["sev-1", "SEV-2"]}, False),
        ({"equals": 1}, {"in": ["1"]}, False),
        ({"contains": "SEV-1"}, {"in": ["SEV-1"]}, False),
    ],
)
def test_a_condition_implies_another_only_when_every_value_it_accepts_the_other_accepts(have, need, implied):
    drawn = [
        {"sources": None, "kinds": None, "when": [{"field": "severity", **item}], "stop": False, "enabled": True}
        for item in (have, need)
    ]
    narrow, wide = ruleset_of(drawn).rules

    assert implies(narrow.when, wide.when) is implied


def link_of(rule: Any) -> tuple[str, str | None, str | None]:
    return (rule.link.relationship, rule.link.parent.template_text, rule.link.child.template_text)


def pairs_by_brute_force(ruleset: Any) -> set[tuple[str, str, str]]:
    """Shadowed and duplicate rules by comparing every rule with every earlier one, as the lint's indexes must."""
    found = set()
    for index, later in enumerate(ruleset.rules):
        earlier = [rule for rule in ruleset.rules[:index] if rule.enabled] if later.enabled else []
        stop = next((rule for rule in earlier if rule.stop and covers(rule, later, UNIVERSE)), None)
        if stop is not None:
            found.add((later.name, "shadowed", stop.name))
        copy = next(
            (
                rule
                for rule in earlier
                if not rule.stop
                and link_of(rule) == link_of(later)
                and (implies(rule.when, later.when) or implies(later.when, rule.when))
                and overlaps(rule, later, UNIVERSE)
            ),
            None,
        )
        if copy is not None:
            found.add((later.name, "duplicate", copy.name))
    return found


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rule, min_size=2, max_size=6))
def test_the_lint_finds_every_shadowed_and_duplicate_rule_that_comparing_all_pairs_finds(drawn):
    ruleset = ruleset_of(drawn)

    found = {(item.rule, item.check, item.other) for item in lint(ruleset, UNIVERSE) if item.other}
    assert found == pairs_by_brute_force(ruleset)


def test_rules_check_reports_each_finding_of_a_rules_file_with_its_line_and_both_rules(runner):
    path = ROOT / "tests" / "fixtures" / "rules" / "lint-findings.yaml"

    result = runner.invoke(args=["rules", "check", "--strict", str(path)])

    assert result.exit_code == 1
    assert (
        f"{path}:15: rule 'sev1-incident-about-db': warning: can never fire: the earlier rule 'every-datadog-sev1'"
        in result.output
    )
    assert f"{path}:35: rule 'p1-page-relates-review': warning: plans the same RELATES_TO link" in result.output
    assert "as rule 'urgent-page-relates-review' (line 25)" in result.output
    assert (
        f"{path}:45: rule 'alertmanager-incident': warning: on.kind 'incident.created': no handler produces"
        in result.output
    )
    assert f"{path}:45: rule 'alertmanager-incident': note: has no examples" in result.output
    assert "3 warning(s), 1 note(s)" in result.output
    assert runner.invoke(args=["rules", "test", str(path)]).exit_code == 0
