"""The rule engine: loading and validating rules.yaml, evaluating events, planning links."""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from caselink.errors import RulesError
from caselink.events import EntityRef
from caselink.events import Event
from caselink.events import Headers
from caselink.events import WebhookRequest
from caselink.rules import OPERATORS
from caselink.rules import Condition
from caselink.rules import FieldPath
from caselink.rules import LiveRules
from caselink.rules import PlannedLink
from caselink.rules import RefSpec
from caselink.rules import Rule
from caselink.rules import RuleSet
from caselink.rules import load_rules
from caselink.rules import parse_rules
from handlers import REGISTRY
from tests.conftest import fixture_json

ROOT = Path(__file__).resolve().parent.parent
INCIDENT_ID = "2f0c6a4e-8d1b-4c3a-9e5f-7a6b5c4d3e2f"
PAGE_ID = "15e74b8b-f865-48d0-bcc5-453323ed2c8f"
CASE_ID = "9daaa414-8843-46e2-8360-c36d3713285f"
CASE_KEY = r"\b[A-Z][A-Z0-9]{1,9}-\d+\b"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
INCIDENT = EntityRef("INCIDENT", INCIDENT_ID)


# -- helpers ------------------------------------------------------------------------


def a_rule(name: str = "r", **overrides: Any) -> dict[str, Any]:
    """A valid rule: the event CAUSES every case key its title or message mentions."""
    rule: dict[str, Any] = {
        "name": name,
        "link": {
            "relationship": "CAUSES",
            "parent": "event",
            "child": {"type": "CASE", "find": {"in": ["title", "message"], "pattern": CASE_KEY}},
        },
    }
    rule.update(overrides)
    return rule


def ruleset(*rules: dict[str, Any], sources: tuple[str, ...] | None = ("datadog",)) -> RuleSet:
    text = yaml.safe_dump({"version": 1, "rules": list(rules)}, sort_keys=False)
    return parse_rules(text, "rules.yaml", sources=sources)


def an_event(
    *,
    source: str = "datadog",
    kind: str = "incident.created",
    entity: EntityRef | None = INCIDENT,
    payload: Any = None,
    **fields: Any,
) -> Event:
    return Event(
        source=source,
        kind=kind,
        dedup_key="test",
        entity=entity,
        payload={} if payload is None else payload,
        **fields,
    )


def condition(raw: dict[str, Any]) -> Condition:
    [rule] = ruleset(a_rule(when=[raw])).rules
    assert rule.when is not None
    [item] = rule.when.items
    assert isinstance(item, Condition)
    return item


def holds(raw: dict[str, Any], value: Any) -> bool:
    """Whether a condition on payload.x holds when the payload's x is `value`."""
    return condition({"field": "payload.x", **raw}).holds(an_event(payload={"x": value}).fields())


def planned(rules: RuleSet, event: Event) -> list[str]:
    return [str(link) for _, link in rules.evaluate(event).planned]


def outcome_of(rules: RuleSet, event: Event, name: str = "r") -> Any:
    return next(outcome for outcome in rules.evaluate(event).outcomes if outcome.rule == name)


def problems_of(text: str, sources: tuple[str, ...] | None = ("datadog",)) -> list[str]:
    with pytest.raises(RulesError) as caught:
        parse_rules(textwrap.dedent(text), "rules.yaml", sources=sources)
    return caught.value.problems


def only_problem(text: str, sources: tuple[str, ...] | None = ("datadog",)) -> str:
    [problem] = problems_of(text, sources)
    return problem


# -- operators ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operator", "wanted", "value", "expected"),
    [
        ("equals", "SEV-1", "SEV-1", True),
        ("equals", "SEV-1", "SEV-2", False),
        ("equals", "SEV-1", "sev-1", False),
        ("equals", 5, "5", True),
        ("equals", 5, 5.0, True),
        ("equals", "5", 5, True),
        ("equals", 5, "5.0", True),
        ("equals", 5, "five", False),
        ("equals", "5.0", "5", False),
        ("equals", True, True, True),
        ("not_equals", "SEV-1", "SEV-2", True),
        ("not_equals", "SEV-1", "SEV-1", False),
        ("not_equals", 5, "5", False),
        ("in", ["SEV-1", "SEV-2"], "SEV-2", True),
        ("in", ["SEV-1", "SEV-2"], "SEV-3", False),
        ("in", [1, 2], "2", True),
        ("in", ["1", "2"], 2, True),
        ("not_in", ["SEV-1", "SEV-2"], "SEV-3", True),
        ("not_in", ["SEV-1", "SEV-2"], "SEV-1", False),
        ("contains", "down", "DB down", True),
        ("contains", "down", "DB up", False),
        ("contains", 42, "OPS-42", True),
        ("not_contains", "[test]", "DB down", True),
        ("not_contains", "[test]", "[test] DB down", False),
        ("starts_with", "DB", "DB down", True),
        ("starts_with", "down", "DB down", False),
        ("ends_with", "down", "DB down", True),
        ("ends_with", "DB", "DB down", False),
        ("matches", r"^DB\s", "DB down", True),
        ("matches", "down", "DB down now", True),
        ("matches", r"^\d+$", "abc", False),
        ("matches", r"^\d+$", 1482, True),
        ("not_matches", r"^\d+$", "abc", True),
        ("not_matches", "down", "DB down", False),
        ("exists", True, "DB down", True),
        ("exists", False, "DB down", False),
        ("exists", True, "", True),
        ("exists", True, 0, True),
        ("gt", 5, 6, True),
        ("gt", 5, 5, False),
        ("gt", 5, "6", True),
        ("gt", 5, "10", True),
        ("gt", 5, 5.5, True),
        ("gt", 5, "abc", False),
        ("gt", 0, True, False),
        ("gt", "10", 9, False),
        ("gt", "2024-01-01", "2024-05-01T00:00:00Z", True),
        ("gte", 5, 5, True),
        ("gte", 5, "4.9", False),
        ("lt", 10, 9, True),
        ("lt", 10, "9", True),
        ("lt", 10, 10, False),
        ("lt", "2024-01-01", "2024-05-01T00:00:00Z", False),
        ("lte", 10, "10", True),
        ("lte", 10, 11, False),
    ],
)
def test_each_operator_compares_a_field_with_the_rule_value(operator, wanted, value, expected):
    assert holds({operator: wanted}, value) is expected


def test_the_operator_table_covers_every_operator():
    assert set(OPERATORS) == {
        "equals",
        "not_equals",
        "in",
        "not_in",
        "contains",
        "not_contains",
        "starts_with",
        "ends_with",
        "matches",
        "not_matches",
        "exists",
        "gt",
        "gte",
        "lt",
        "lte",
    }


def test_a_value_is_never_a_regex_unless_the_operator_is_matches():
    assert holds({"equals": "SEV-."}, "SEV-1") is False
    assert holds({"contains": ".*"}, "anything") is False
    assert holds({"in": ["SEV-."]}, "SEV-1") is False


@pytest.mark.parametrize(
    ("operator", "wanted", "value", "case_sensitive_result"),
    [
        ("equals", "sev-1", "SEV-1", False),
        ("not_equals", "sev-1", "SEV-1", True),
        ("in", ["sev-1", "sev-2"], "SEV-1", False),
        ("not_in", ["sev-1", "sev-2"], "SEV-1", True),
        ("contains", "DOWN", "db down", False),
        ("not_contains", "[TEST]", "[test] db down", True),
        ("starts_with", "db", "DB down", False),
        ("ends_with", "DOWN", "db down", False),
        ("matches", "^db", "DB down", False),
        ("not_matches", "^db", "DB down", True),
    ],
)
def test_ignore_case_makes_every_text_operator_case_insensitive(operator, wanted, value, case_sensitive_result):
    assert holds({operator: wanted}, value) is case_sensitive_result
    assert holds({operator: wanted, "ignore_case": True}, value) is not case_sensitive_result


@pytest.mark.parametrize(("operator", "wanted"), [("gt", 1), ("gte", 1), ("lt", 1), ("lte", 1), ("exists", True)])
def test_ignore_case_on_an_operator_that_is_not_about_text_is_rejected(operator, wanted):
    with pytest.raises(RulesError, match="ignore_case applies to text operators"):
        condition({"field": "payload.x", operator: wanted, "ignore_case": True})


# -- list fields ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operator", "wanted", "expected"),
    [
        ("equals", "checkout", True),
        ("equals", "billing", False),
        ("in", ["billing", "checkout"], True),
        ("contains", "pay", True),
        ("starts_with", "check", True),
        ("ends_with", "api", True),
        ("matches", "^pay", True),
        ("matches", "^bill", False),
    ],
)
def test_a_condition_on_a_list_field_holds_when_any_element_satisfies_it(operator, wanted, expected):
    assert holds({operator: wanted}, ["payments-api", "checkout"]) is expected


@pytest.mark.parametrize(
    ("negated", "positive", "wanted"),
    [
        ("not_equals", "equals", "checkout"),
        ("not_equals", "equals", "billing"),
        ("not_in", "in", ["checkout"]),
        ("not_in", "in", ["billing"]),
        ("not_contains", "contains", "pay"),
        ("not_contains", "contains", "bill"),
        ("not_matches", "matches", "^check"),
        ("not_matches", "matches", "^bill"),
    ],
)
@pytest.mark.parametrize("value", [["payments-api", "checkout"], ["checkout"], [], "checkout", None])
def test_a_negated_operator_holds_exactly_when_its_positive_form_does_not(negated, positive, wanted, value):
    assert holds({negated: wanted}, value) is not holds({positive: wanted}, value)


def test_a_negated_operator_on_a_list_holds_only_when_no_element_satisfies_the_positive_one():
    assert holds({"not_equals": "checkout"}, ["payments-api", "checkout"]) is False
    assert holds({"not_equals": "billing"}, ["payments-api", "checkout"]) is True


def test_tags_are_list_fields_matched_element_by_element():
    fields = an_event(tags={"service": ["payments-api", "checkout"]}).fields()

    assert condition({"field": "tags.service", "equals": "checkout"}).holds(fields)
    assert not condition({"field": "tags.service", "not_in": ["checkout"]}).holds(fields)
    assert not condition({"field": "tags.team", "exists": True}).holds(fields)


def test_a_path_through_a_list_of_objects_looks_into_every_element():
    fields = an_event(payload={"alerts": [{"labels": {"sev": "low"}}, {"labels": {"sev": "high"}}]}).fields()

    assert condition({"field": "payload.alerts.labels.sev", "equals": "high"}).holds(fields)
    assert condition({"field": "payload.alerts[0].labels.sev", "equals": "low"}).holds(fields)
    assert not condition({"field": "payload.alerts[0].labels.sev", "equals": "high"}).holds(fields)
    assert condition({"field": "payload.alerts.1.labels.sev", "equals": "high"}).holds(fields)


# -- missing fields ------------------------------------------------------------------------

MISSING_FIELD_CASES = [
    ("equals", "x", False),
    ("not_equals", "x", True),
    ("in", ["x"], False),
    ("not_in", ["x"], True),
    ("contains", "x", False),
    ("not_contains", "x", True),
    ("starts_with", "x", False),
    ("ends_with", "x", False),
    ("matches", ".*", False),
    ("not_matches", ".*", True),
    ("exists", True, False),
    ("exists", False, True),
    ("gt", 0, False),
    ("gte", 0, False),
    ("lt", 0, False),
    ("lte", 0, False),
]


def test_the_missing_field_table_covers_every_operator():
    assert {operator for operator, _, _ in MISSING_FIELD_CASES} == set(OPERATORS)


@pytest.mark.parametrize(("operator", "wanted", "expected"), MISSING_FIELD_CASES)
def test_a_missing_field_satisfies_only_exists_false_and_the_negated_operators(operator, wanted, expected):
    fields = an_event(payload={"other": 1}).fields()

    assert condition({"field": "payload.x", operator: wanted}).holds(fields) is expected


@pytest.mark.parametrize(("operator", "wanted", "expected"), MISSING_FIELD_CASES)
def test_a_null_field_counts_as_missing(operator, wanted, expected):
    assert holds({operator: wanted}, None) is expected


def test_an_empty_list_field_counts_as_missing():
    assert holds({"exists": False}, []) is True
    assert holds({"not_equals": "x"}, []) is True


def test_an_event_without_entity_has_no_entity_field():
    fields = an_event(entity=None).fields()

    assert condition({"field": "entity", "exists": False}).holds(fields)
    assert condition({"field": "entity.type", "not_equals": "CASE"}).holds(fields)


# -- when: groups and explanations ------------------------------------------------------------

WHEN_LIST = [
    {"field": "severity", "in": ["SEV-1", "SEV-2"]},
    {"field": "title", "not_contains": "[test]", "ignore_case": True},
]


def test_when_as_a_list_needs_every_condition():
    rules = ruleset(a_rule(when=WHEN_LIST))

    assert planned(rules, an_event(severity="SEV-1", title="DB down, see OPS-42")) == [
        f"INCIDENT:{INCIDENT_ID} CAUSES CASE:OPS-42"
    ]
    assert planned(rules, an_event(severity="SEV-3", title="DB down, see OPS-42")) == []


def test_when_as_a_list_explains_the_first_failing_condition():
    rules = ruleset(a_rule(when=WHEN_LIST))

    outcome = outcome_of(rules, an_event(severity="SEV-1", title="[TEST] OPS-42"))

    assert outcome.outcome == "not_matched"
    assert outcome.reason == 'when[1]: title not_contains "[test]" (ignore_case): title is "[TEST] OPS-42"'


def test_when_all_explains_the_first_failing_condition():
    rules = ruleset(
        a_rule(when={"all": [{"field": "severity", "equals": "SEV-1"}, {"field": "status", "exists": True}]})
    )

    outcome = outcome_of(rules, an_event(severity="SEV-2"))

    assert outcome.reason == 'when.all[0]: severity equals "SEV-1": severity is "SEV-2"'


def test_when_any_holds_when_one_condition_holds():
    rules = ruleset(
        a_rule(when={"any": [{"field": "severity", "equals": "SEV-1"}, {"field": "severity", "equals": "SEV-2"}]})
    )

    assert outcome_of(rules, an_event(severity="SEV-2", title="OPS-1")).outcome == "matched"


def test_when_any_explains_that_none_held_with_the_first_failure():
    rules = ruleset(
        a_rule(when={"any": [{"field": "severity", "equals": "SEV-1"}, {"field": "severity", "equals": "SEV-2"}]})
    )

    outcome = outcome_of(rules, an_event(severity="SEV-3"))

    assert outcome.outcome == "not_matched"
    assert outcome.reason == 'when.any: none held (first: when.any[0]: severity equals "SEV-1": severity is "SEV-3")'


def test_when_none_fails_when_a_condition_holds_and_says_which():
    rules = ruleset(
        a_rule(when={"none": [{"field": "status", "equals": "resolved"}, {"field": "title", "contains": "test"}]})
    )

    outcome = outcome_of(rules, an_event(title="a test, OPS-1"))

    assert outcome.outcome == "not_matched"
    assert outcome.reason == 'when.none[1]: title contains "test" holds (title is "a test, OPS-1") but must not'
    assert outcome_of(rules, an_event(title="real, OPS-1")).outcome == "matched"


def test_when_with_all_and_none_needs_both():
    rules = ruleset(
        a_rule(
            when={
                "all": [{"field": "severity", "equals": "SEV-1"}],
                "none": [{"field": "title", "contains": "[test]"}],
            }
        )
    )

    assert outcome_of(rules, an_event(severity="SEV-1", title="OPS-1")).outcome == "matched"
    assert outcome_of(rules, an_event(severity="SEV-1", title="[test] OPS-1")).reason.startswith("when.none[0]:")
    assert outcome_of(rules, an_event(severity="SEV-2", title="OPS-1")).reason.startswith("when.all[0]:")


def test_nested_groups_explain_the_innermost_failure():
    rules = ruleset(
        a_rule(
            when={
                "all": [
                    {"field": "severity", "equals": "SEV-1"},
                    {
                        "any": [
                            {"field": "tags.service", "equals": "payments"},
                            {"field": "tags.team", "equals": "core"},
                        ]
                    },
                ]
            }
        )
    )

    assert outcome_of(rules, an_event(severity="SEV-1", title="OPS-1", tags={"team": ["core"]})).outcome == "matched"
    outcome = outcome_of(rules, an_event(severity="SEV-1", title="OPS-1"))
    assert outcome.reason == (
        "when.all[1].any: none held"
        ' (first: when.all[1].any[0]: tags.service equals "payments": tags.service is missing)'
    )


def test_a_nested_group_under_none_fails_when_the_whole_group_holds():
    rules = ruleset(
        a_rule(
            when={
                "none": [{"all": [{"field": "severity", "equals": "SEV-5"}, {"field": "status", "equals": "stable"}]}]
            }
        )
    )

    outcome = outcome_of(rules, an_event(severity="SEV-5", status="stable"))

    assert outcome.reason == "when.none[0].all: the group holds but must not"
    assert outcome_of(rules, an_event(severity="SEV-5", status="active", title="OPS-1")).outcome == "matched"


def test_when_as_a_single_condition_mapping_is_one_condition():
    rules = ruleset(a_rule(when={"field": "severity", "equals": "SEV-1"}))

    assert outcome_of(rules, an_event(severity="SEV-2")).reason == 'when: severity equals "SEV-1": severity is "SEV-2"'


def test_an_empty_when_list_is_rejected():
    with pytest.raises(RulesError, match="when is an empty list"):
        ruleset(a_rule(when=[]))


def test_an_empty_group_list_is_rejected():
    with pytest.raises(RulesError, match=re.escape("when.any must be a non-empty list")):
        ruleset(a_rule(when={"any": []}))


# -- on: source and kind ------------------------------------------------------------------------


def test_on_source_selects_events_by_sender():
    rules = ruleset(a_rule(on={"source": "datadog"}), sources=("datadog", "pagerduty"))

    assert outcome_of(rules, an_event(title="OPS-1")).outcome == "matched"
    outcome = outcome_of(rules, an_event(source="pagerduty", title="OPS-1"))
    assert outcome.outcome == "not_applicable"
    assert outcome.reason == "on.source: 'pagerduty' is not 'datadog'"


def test_on_source_takes_a_list_and_globs():
    rules = ruleset(
        a_rule("listed", on={"source": ["datadog", "grafana"]}),
        a_rule("globbed", on={"source": "page*"}),
        sources=("datadog", "grafana", "pagerduty"),
    )

    matched = {outcome.rule for outcome in rules.evaluate(an_event(source="pagerduty", title="OPS-1")).matched}
    assert matched == {"globbed"}


def test_on_kind_takes_names_and_globs():
    rules = ruleset(
        a_rule("named", on={"kind": ["incident.created", "incident.updated"]}),
        a_rule("globbed", on={"kind": "incident.*"}),
    )

    assert {o.rule for o in rules.evaluate(an_event(kind="incident.updated", title="OPS-1")).matched} == {
        "named",
        "globbed",
    }
    assert {o.rule for o in rules.evaluate(an_event(kind="incident.resolved", title="OPS-1")).matched} == {"globbed"}
    outcome = outcome_of(rules, an_event(kind="page.escalated"), "named")
    assert outcome.reason == "on.kind: 'page.escalated' is not one of 'incident.created', 'incident.updated'"


@pytest.mark.parametrize(
    "written",
    [
        "alert.No Data",
        "alert.no_data",
        ["alert.Triggered", "alert.No Data"],
        "alert.No *",
        "ALERT.NO*",
        "alert.[Nn]o?Data",
    ],
)
def test_on_kind_written_in_any_form_selects_the_canonical_kind(written):
    rules = ruleset(a_rule(on={"kind": written}))

    assert outcome_of(rules, an_event(kind="alert.No Data", title="OPS-1")).outcome == "matched"
    assert outcome_of(rules, an_event(kind="alert.no_data", title="OPS-1")).outcome == "matched"
    assert outcome_of(rules, an_event(kind="alert.recovered", title="OPS-1")).outcome == "not_applicable"


def test_on_kind_not_in_canonical_form_is_a_warning_with_file_line_and_rule():
    rules = parse_rules(
        textwrap.dedent(
            """\
            version: 1
            rules:
              - name: no-data
                on:
                  kind: [alert.No Data, alert.no_data, Alert.Re-Triggered]
                link: {relationship: CAUSES, parent: event, child: {type: CASE, id: OPS-1}}
            """
        ),
        "rules.yaml",
    )

    assert rules.warnings == (
        "rules.yaml:5: rule 'no-data': warning: on.kind 'alert.No Data' is not in canonical form;"
        " it matches as 'alert.no_data'",
        "rules.yaml:5: rule 'no-data': warning: on.kind 'Alert.Re-Triggered' is not in canonical form;"
        " it matches as 'alert.re_triggered'",
    )
    assert rules.rules[0].kinds == ("alert.no_data", "alert.no_data", "alert.re_triggered")


def test_canonical_on_kinds_and_globs_give_no_warning():
    assert ruleset(a_rule(on={"kind": ["alert.no_data", "incident.*", "alert.[nr]*"]})).warnings == ()


def test_an_on_kind_with_no_letters_or_digits_is_rejected():
    with pytest.raises(RulesError, match="on.kind '---' names no kind"):
        ruleset(a_rule(on={"kind": "---"}))


def test_a_rule_without_on_applies_to_every_event():
    rules = ruleset(a_rule(), sources=("datadog", "pagerduty"))

    assert outcome_of(rules, an_event(source="pagerduty", kind="whatever", title="OPS-1")).outcome == "matched"


def test_on_source_names_only_known_sources_with_a_suggestion():
    problem = only_problem(
        """\
        version: 1
        rules:
          - name: typo
            on: {source: datadgo}
            link: {relationship: CAUSES, parent: event, child: {type: CASE, id: OPS-1}}
        """
    )

    assert problem.startswith("rules.yaml:4: rule 'typo': on.source: no source named 'datadgo'")
    assert "(did you mean 'datadog'?)" in problem


def test_an_on_source_glob_that_matches_no_known_source_is_rejected():
    with pytest.raises(RulesError, match="no source named 'pager\\*'"):
        ruleset(a_rule(on={"source": "pager*"}), sources=("datadog",))


# -- refs -----------------------------------------------------------------------------------------


def test_parent_event_is_the_entity_the_event_is_about():
    rules = ruleset(a_rule())

    assert planned(rules, an_event(title="see OPS-42")) == [f"INCIDENT:{INCIDENT_ID} CAUSES CASE:OPS-42"]


def test_an_event_side_on_an_event_about_no_entity_is_a_recorded_problem():
    rules = ruleset(a_rule())

    outcome = outcome_of(rules, an_event(entity=None, title="see OPS-42"))

    assert outcome.outcome == "matched"
    assert outcome.links == []
    assert outcome.problems == ["link.parent: the event is about no entity"]


def test_an_id_template_renders_from_the_event_fields():
    rules = ruleset(
        a_rule(
            link={
                "relationship": "CAUSES",
                "parent": "event",
                "child": {"type": "CASE", "id": "{{ payload.case.uuid }}"},
            }
        )
    )

    [(_, link)] = rules.evaluate(an_event(payload={"case": {"uuid": CASE_ID.upper()}})).planned

    assert link == PlannedLink(INCIDENT, "CAUSES", EntityRef("CASE", CASE_ID))
    assert link.child.is_resolved


def test_an_id_template_sees_every_event_field_as_a_name():
    rules = ruleset(
        a_rule(
            link={
                "relationship": "RELATES_TO",
                "parent": {"type": "CASE", "id": "{{ tags.case[0] }}"},
                "child": {"type": "INCIDENT", "id": "{{ entity.id }}"},
            }
        )
    )

    assert planned(rules, an_event(tags={"case": ["ops-7"]})) == [f"CASE:OPS-7 RELATES_TO INCIDENT:{INCIDENT_ID}"]


def test_a_template_reading_a_missing_payload_key_is_a_problem_not_an_empty_string():
    rules = ruleset(
        a_rule(
            link={
                "relationship": "CAUSES",
                "parent": "event",
                "child": {"type": "CASE", "id": "OPS-{{ payload.case.n }}"},
            }
        )
    )

    outcome = outcome_of(rules, an_event(payload={"incident": {}}))

    assert outcome.outcome == "matched"
    assert outcome.links == []
    [problem] = outcome.problems
    assert problem.startswith("link.child.id: template failed: UndefinedError:")
    assert "case" in problem
    assert outcome.as_dict()["problems"] == [problem]


def test_a_template_that_raises_at_run_time_is_a_recorded_problem():
    rules = ruleset(
        a_rule(
            link={"relationship": "CAUSES", "parent": "event", "child": {"type": "CASE", "id": "{{ payload.n // 0 }}"}}
        )
    )

    outcome = outcome_of(rules, an_event(payload={"n": 1}))

    assert outcome.problems == ["link.child.id: template failed: ZeroDivisionError: integer division or modulo by zero"]


def test_the_template_sandbox_refuses_unsafe_attribute_access():
    rules = ruleset(
        a_rule(
            link={
                "relationship": "CAUSES",
                "parent": "event",
                "child": {"type": "CASE", "id": "{{ title.__class__.__mro__ }}"},
            }
        )
    )

    [problem] = outcome_of(rules, an_event(title="x")).problems

    assert "SecurityError" in problem
    assert "unsafe" in problem


def test_a_template_cannot_change_the_event_it_reads():
    rules = ruleset(
        a_rule(
            link={
                "relationship": "CAUSES",
                "parent": "event",
                "child": {"type": "CASE", "id": "{{ payload.clear() }}OPS-1"},
            }
        )
    )
    event = an_event(payload={"keep": "me"})

    [problem] = outcome_of(rules, event).problems

    assert "unsafe" in problem
    assert event.payload == {"keep": "me"}


def test_a_payload_key_named_like_a_dict_method_is_the_key_in_a_template():
    rules = ruleset(
        a_rule(
            link={"relationship": "CAUSES", "parent": "event", "child": {"type": "CASE", "id": "{{ payload.items }}"}}
        )
    )

    assert planned(rules, an_event(payload={"items": "OPS-9"})) == [f"INCIDENT:{INCIDENT_ID} CAUSES CASE:OPS-9"]


@pytest.mark.parametrize(
    ("pattern", "title", "expected"),
    [
        (r"see (?P<prefix>case )?(?P<ref>[A-Z]+-\d+)", "see case OPS-1", ["OPS-1"]),
        (r"(see) ([A-Z]+-\d+)", "see OPS-2", []),
        (r"see ([A-Z]+-\d+)", "see OPS-3", ["OPS-3"]),
        (r"[A-Z]+-\d+", "see OPS-4 and OPS-5", ["OPS-4", "OPS-5"]),
    ],
    ids=["named-group-ref", "first-group", "first-group-is-the-key", "whole-match"],
)
def test_find_takes_the_ref_group_else_the_first_group_else_the_whole_match(pattern, title, expected):
    rules = ruleset(
        a_rule(
            link={
                "relationship": "CAUSES",
                "parent": "event",
                "child": {"type": "CASE", "find": {"in": "title", "pattern": pattern}},
            }
        )
    )

    outcome = outcome_of(rules, an_event(title=title))

    assert [link.child.id for link in outcome.links] == expected
    if not expected:
        # The first group is "see": not a case key, so it is reported rather than linked.
        assert outcome.problems == ["link.child: 'see' is neither a case UUID nor a case key like OPS-42"]


def test_find_plans_one_link_per_distinct_ref():
    rules = ruleset(
        a_rule(
            link={
                "relationship": "CAUSES",
                "parent": "event",
                "child": {"type": "CASE", "find": {"in": ["title", "message"], "pattern": r"(?i)\bops-\d+"}},
            }
        )
    )

    links = planned(rules, an_event(title="OPS-1 and ops-1", message="OPS-1, OPS-2"))

    assert links == [f"INCIDENT:{INCIDENT_ID} CAUSES CASE:OPS-1", f"INCIDENT:{INCIDENT_ID} CAUSES CASE:OPS-2"]


def test_two_found_sides_plan_every_distinct_pair_but_never_an_entity_with_itself():
    rules = ruleset(
        a_rule(
            link={
                "relationship": "RELATES_TO",
                "parent": {"type": "CASE", "find": {"in": ["title"], "pattern": CASE_KEY}},
                "child": {"type": "CASE", "find": {"in": ["message"], "pattern": CASE_KEY}},
            }
        )
    )

    links = planned(rules, an_event(title="OPS-1 OPS-2", message="OPS-2 OPS-3"))

    assert links == [
        "CASE:OPS-1 RELATES_TO CASE:OPS-2",
        "CASE:OPS-1 RELATES_TO CASE:OPS-3",
        "CASE:OPS-2 RELATES_TO CASE:OPS-3",
    ]


def test_a_case_that_mentions_itself_is_not_linked_to_itself():
    rules = ruleset(a_rule(link={**a_rule()["link"], "relationship": "RELATES_TO"}))

    links = planned(
        rules, an_event(kind="case.updated", entity=EntityRef("CASE", "OPS-50"), title="OPS-50 after OPS-42")
    )

    assert links == ["CASE:OPS-50 RELATES_TO CASE:OPS-42"]


def test_find_searches_a_list_field_element_by_element():
    rules = ruleset(
        a_rule(
            link={
                "relationship": "CAUSES",
                "parent": "event",
                "child": {
                    "type": "CASE",
                    "find": {"in": ["tags.case", "payload.refs.key"], "pattern": r"^[A-Z]+-\d+$"},
                },
            }
        )
    )
    event = an_event(tags={"case": ["OPS-1", "OPS-2"]}, payload={"refs": [{"key": "OPS-3"}, {"key": "not a key"}]})

    assert [link.child.id for _, link in rules.evaluate(event).planned] == ["OPS-1", "OPS-2", "OPS-3"]


def test_a_found_uuid_is_used_as_is_and_a_case_key_is_kept_for_the_worker():
    rules = ruleset(
        a_rule(
            link={
                "relationship": "CAUSES",
                "parent": "event",
                "child": {"type": "CASE", "find": {"in": ["message"], "pattern": rf"(?P<ref>{UUID}|\b[A-Z]+-\d+)"}},
            }
        )
    )

    outcome = outcome_of(rules, an_event(message=f"cases {CASE_ID} and OPS-42"))

    assert [link.child for link in outcome.links] == [EntityRef("CASE", CASE_ID), EntityRef("CASE", "OPS-42")]
    assert [link.child.is_resolved for link in outcome.links] == [True, False]


def test_a_non_uuid_token_for_a_type_other_than_case_is_a_recorded_problem():
    rules = ruleset(
        a_rule(
            link={
                "relationship": "CAUSES",
                "parent": {"type": "INCIDENT", "find": {"in": ["message"], "pattern": r"incident ([\w-]+)"}},
                "child": "event",
            }
        )
    )

    outcome = outcome_of(
        rules, an_event(entity=EntityRef("CASE", "OPS-1"), message=f"incident 1482, incident {INCIDENT_ID}")
    )

    assert [str(link) for link in outcome.links] == [f"INCIDENT:{INCIDENT_ID} CAUSES CASE:OPS-1"]
    assert outcome.problems == [
        "link.parent: INCIDENT ref '1482' is not a UUID; only case keys can be resolved to UUIDs"
    ]


def test_a_link_without_a_case_side_at_run_time_is_recorded_with_that_reason():
    rules = ruleset(
        a_rule(
            link={
                "relationship": "ESCALATES_TO",
                "parent": "event",
                "child": {"type": "INCIDENT", "find": {"in": ["message"], "pattern": UUID}},
            }
        )
    )

    outcome = outcome_of(rules, an_event(kind="page.escalated", entity=EntityRef("PAGE", PAGE_ID), message=INCIDENT_ID))

    assert outcome.links == []
    assert outcome.problems == [
        f"link: PAGE:{PAGE_ID} ESCALATES_TO INCIDENT:{INCIDENT_ID} has no CASE side; Datadog requires at least one"
    ]


def test_a_rule_whose_two_sides_can_never_be_a_case_is_rejected_at_load():
    problem = only_problem(
        """\
        version: 1
        rules:
          - name: no-case
            link:
              relationship: CAUSES
              parent: {type: INCIDENT, id: "{{ payload.incident }}"}
              child: {type: PAGE, find: {in: [message], pattern: x}}
        """
    )

    assert problem.startswith("rules.yaml:4: rule 'no-case': link can never have a CASE side (INCIDENT CAUSES PAGE)")


def test_a_rule_linking_the_event_to_itself_is_rejected_at_load():
    with pytest.raises(RulesError, match="parent and child are both event"):
        ruleset(a_rule(link={"relationship": "CAUSES", "parent": "event", "child": "event"}))


def test_a_constant_id_is_checked_at_load():
    with pytest.raises(RulesError, match="INCIDENT ref 'abc' is not a UUID"):
        ruleset(a_rule(link={"relationship": "CAUSES", "parent": {"type": "INCIDENT", "id": "abc"}, "child": "event"}))


def test_a_constant_case_key_id_plans_that_case():
    rules = ruleset(
        a_rule(link={"relationship": "CAUSES", "parent": "event", "child": {"type": "CASE", "id": "ops-42"}})
    )

    assert planned(rules, an_event()) == [f"INCIDENT:{INCIDENT_ID} CAUSES CASE:OPS-42"]


def test_ref_specs_say_whether_they_are_the_event():
    [rule] = ruleset(a_rule()).rules

    assert isinstance(rule.link.parent, RefSpec)
    assert rule.link.parent.is_event
    assert not rule.link.child.is_event
    assert rule.link.child.type == "CASE"


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


# -- order, stop, enabled, mode -----------------------------------------------------------------


def test_every_matching_rule_fires_in_file_order():
    rules = ruleset(a_rule("first"), a_rule("second", link={**a_rule()["link"], "relationship": "RELATES_TO"}))

    evaluation = rules.evaluate(an_event(title="OPS-1"))

    assert [outcome.rule for outcome in evaluation.matched] == ["first", "second"]
    assert [str(link) for _, link in evaluation.planned] == [
        f"INCIDENT:{INCIDENT_ID} CAUSES CASE:OPS-1",
        f"INCIDENT:{INCIDENT_ID} RELATES_TO CASE:OPS-1",
    ]


def test_stop_ends_evaluation_once_the_rule_matched():
    rules = ruleset(a_rule("stopper", stop=True, when=[{"field": "severity", "equals": "SEV-1"}]), a_rule("later"))

    stopped = rules.evaluate(an_event(severity="SEV-1", title="OPS-1")).trace()
    assert [(item["rule"], item["outcome"]) for item in stopped] == [("stopper", "matched"), ("later", "skipped")]
    assert stopped[1]["reason"] == "rule 'stopper' has stop: true"

    not_stopped = rules.evaluate(an_event(severity="SEV-2", title="OPS-1")).trace()
    assert [(item["rule"], item["outcome"]) for item in not_stopped] == [
        ("stopper", "not_matched"),
        ("later", "matched"),
    ]


def test_a_disabled_rule_is_recorded_and_plans_nothing():
    rules = ruleset(a_rule(enabled=False))

    assert rules.evaluate(an_event(title="OPS-1")).trace() == [
        {"rule": "r", "outcome": "disabled", "reason": "enabled: false"}
    ]


def test_a_dry_run_rule_plans_links_marked_dry_run():
    rules = ruleset(a_rule(mode="dry-run"))

    evaluation = rules.evaluate(an_event(title="OPS-1"))

    [outcome] = evaluation.matched
    assert outcome.dry_run
    assert evaluation.trace() == [
        {
            "rule": "r",
            "outcome": "matched",
            "links": [{"parent": f"INCIDENT:{INCIDENT_ID}", "relationship": "CAUSES", "child": "CASE:OPS-1"}],
            "mode": "dry-run",
        }
    ]


def test_rules_default_to_enabled_live_and_not_stopping():
    [rule] = ruleset(a_rule()).rules

    assert isinstance(rule, Rule)
    assert (rule.enabled, rule.mode, rule.dry_run, rule.stop) == (True, "live", False, False)


@pytest.mark.parametrize(("key", "value"), [("stop", "yes"), ("enabled", "no"), ("enabled", 1)])
def test_stop_and_enabled_take_only_true_or_false(key, value):
    with pytest.raises(RulesError, match=f"{key} must be true or false, not {value!r}"):
        ruleset(a_rule(**{key: value}))


def test_a_bad_mode_is_rejected_with_a_suggestion():
    with pytest.raises(
        RulesError, match=re.escape("mode must be live or dry-run, not 'dryrun' (did you mean 'dry-run'?)")
    ):
        ruleset(a_rule(mode="dryrun"))


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


# -- field paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("title", ("title",)),
        ("tags.service", ("tags", "service")),
        ("payload.event.data.urgency", ("payload", "event", "data", "urgency")),
        ('payload["a.b"].c', ("payload", "a.b", "c")),
        ("payload['x y'][2]", ("payload", "x y", 2)),
        ("payload.alerts[0].labels", ("payload", "alerts", 0, "labels")),
    ],
)
def test_a_field_path_reads_dots_quoted_keys_and_indexes(path, parts):
    assert FieldPath.parse(path) == FieldPath(path, parts)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "field path is empty"),
        (".title", "at character 1"),
        ("title.", "at character 6"),
        ("payload.a[0]b", "at character 13"),
        ("payload.[0]", "at character 8"),
        ("payload[x]", "at character 8"),
        ("Title", "(did you mean 'title'?)"),
        ("severty", "(did you mean 'severity'?)"),
    ],
)
def test_a_bad_field_path_says_where_it_is_wrong(path, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        FieldPath.parse(path)


def test_a_field_path_reads_a_quoted_key_containing_dots():
    fields = an_event(payload={"a.b": {"c": "found"}, "a": {"b": {"c": "wrong"}}}).fields()

    assert FieldPath.parse('payload["a.b"].c').values(fields) == ["found"]


def test_a_field_path_index_past_the_end_is_missing():
    assert FieldPath.parse("payload.x[5]").values(an_event(payload={"x": [1]}).fields()) == []


# -- loading from disk ------------------------------------------------------------------------


def test_load_rules_reports_a_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"

    with pytest.raises(RulesError) as caught:
        load_rules(missing)

    assert caught.value.problems == [f"{missing}: cannot read the rules file: No such file or directory"]


def test_load_rules_reports_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_bytes(b"version: 1\nrules: []\n\xff\xfe")

    with pytest.raises(RulesError) as caught:
        load_rules(path)

    assert caught.value.problems == [f"{path}: the rules file is not UTF-8 text"]


def test_load_rules_names_the_file_in_every_problem(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("version: 1\nrules:\n  - name: x\n    lnk: {}\n", encoding="utf-8")

    with pytest.raises(RulesError) as caught:
        load_rules(path)

    assert all(problem.startswith(f"{path}:") for problem in caught.value.problems)
    assert caught.value.problems[0].startswith(f"{path}:4: rule 'x': unknown key 'lnk'")


def test_the_digest_identifies_the_file_content():
    text = yaml.safe_dump({"version": 1, "rules": [a_rule()]})

    assert parse_rules(text).digest == parse_rules(text).digest
    assert parse_rules(text).digest != parse_rules(text + "# changed\n").digest


# -- the repository's rules.yaml ------------------------------------------------------------------


def repository_rules() -> RuleSet:
    return load_rules(ROOT / "rules.yaml", sources=tuple(REGISTRY))


def events_for(source: str, payload: Any) -> list[Event]:
    handler = REGISTRY[source]
    body = json.dumps(payload).encode()
    request = WebhookRequest(source, body, Headers({"Content-Type": "application/json"}), "application/json", 0.0)
    return list(handler.normalise(handler.parse(request), request))


def test_the_repository_rules_load_and_have_examples():
    rules = repository_rules()

    assert rules.rules
    assert all(rule.examples for rule in rules.rules)


def test_the_repository_rules_examples_plan_exactly_their_links():
    rules = repository_rules()

    for rule in rules.rules:
        for index, example in enumerate(rule.examples):
            got: list[PlannedLink] = []
            for event in events_for(example.source, example.payload):
                outcome = next(o for o in rules.evaluate(event).outcomes if o.rule == rule.name)
                assert not outcome.problems, (rule.name, index, outcome.problems)
                got.extend(outcome.links)
            assert sorted(map(str, got)) == sorted(map(str, example.links)), (rule.name, index)


def test_the_repository_rules_link_the_sample_incident_to_the_case_it_mentions():
    [event] = events_for("datadog", fixture_json("datadog", "incident-created.json"))

    links = [str(link) for _, link in repository_rules().evaluate(event).planned]

    assert links == ["INCIDENT:01c03111-172a-50c7-8df3-d61e64b0e74b CAUSES CASE:OPS-42"]


def test_the_repository_rules_escalate_the_sample_page_to_the_case_uuid_it_names():
    [event] = events_for("datadog", fixture_json("datadog", "page-escalated.json"))

    links = [str(link) for _, link in repository_rules().evaluate(event).planned]

    assert links == [f"PAGE:{PAGE_ID} ESCALATES_TO CASE:{CASE_ID}"]


# -- LiveRules -----------------------------------------------------------------------------------


def write_rules(path: Path, *names: str) -> None:
    """Write a valid rules file and move its mtime on, so a change is seen even within one clock tick."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(yaml.safe_dump({"version": 1, "rules": [a_rule(name) for name in names]}), encoding="utf-8")
    stamp = max(path.stat().st_mtime_ns, before + 1_000_000_000)
    os.utime(path, ns=(stamp, stamp))


def test_live_rules_reload_when_the_file_changes(tmp_path):
    path = tmp_path / "rules.yaml"
    write_rules(path, "first")
    reloads: list[tuple[Any, Any]] = []
    live = LiveRules(path, check_every=0, on_reload=lambda rules, error: reloads.append((rules, error)))

    assert [rule.name for rule in live.current().rules] == ["first"]
    write_rules(path, "second", "third")

    assert [rule.name for rule in live.current().rules] == ["second", "third"]
    assert live.error is None
    assert [(rules.rules[0].name, error) for rules, error in reloads] == [("second", None)]


def test_live_rules_keep_the_rules_in_force_when_the_new_file_fails_validation(tmp_path):
    path = tmp_path / "rules.yaml"
    write_rules(path, "good")
    reloads: list[tuple[Any, Any]] = []
    live = LiveRules(path, check_every=0, on_reload=lambda rules, error: reloads.append((rules, error)))
    good = live.current()

    path.write_text("version: 1\nrules:\n  - name: bad\n    whn: []\n", encoding="utf-8")
    os.utime(path, ns=(path.stat().st_mtime_ns + 2_000_000_000,) * 2)

    assert live.current() is good
    assert isinstance(live.error, RulesError)
    assert live.error.problems[0].startswith(f"{path}:4: rule 'bad': unknown key 'whn'")
    assert reloads == [(None, live.error)]

    write_rules(path, "fixed")
    assert [rule.name for rule in live.current().rules] == ["fixed"]
    assert live.error is None


def test_live_rules_keep_the_rules_in_force_when_the_file_disappears(tmp_path):
    path = tmp_path / "rules.yaml"
    write_rules(path, "good")
    live = LiveRules(path, check_every=0)
    good = live.current()

    path.unlink()

    assert live.current() is good
    assert "cannot read the rules file" in live.error.problems[0]


def test_live_rules_start_without_rules_when_the_first_file_is_bad(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("version: 2\nrules: []\n", encoding="utf-8")

    live = LiveRules(path, check_every=0)

    assert live.current() is None
    assert live.error.problems == [f"{path}:1: version must be 1, not 2"]


def test_live_rules_look_at_the_file_no_more_often_than_asked(tmp_path):
    path = tmp_path / "rules.yaml"
    write_rules(path, "first")
    live = LiveRules(path, check_every=3600)

    write_rules(path, "second")

    assert [rule.name for rule in live.current().rules] == ["first"]


# -- counts and checks that tell the truth (issue 12 §6) -----------------------------------------


def test_two_rules_planning_the_same_link_plan_one_link():
    rules = ruleset(a_rule("first"), a_rule("second"))

    evaluation = rules.evaluate(an_event(title="see OPS-42"))

    assert len(evaluation.planned) == 2
    assert [str(link) for link in evaluation.links] == [f"INCIDENT:{INCIDENT_ID} CAUSES CASE:OPS-42"]


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


def test_a_reload_compiles_only_the_patterns_and_templates_it_has_not_seen(monkeypatch):
    from caselink import regex
    from caselink import rules as rules_module

    compiled: list[Any] = []
    real_compile = regex.re2.compile
    monkeypatch.setattr(regex.re2, "compile", lambda pattern, *a: compiled.append(pattern) or real_compile(pattern, *a))
    real_template = rules_module._templates.from_string
    monkeypatch.setattr(
        rules_module._templates, "from_string", lambda source: compiled.append(source) or real_template(source)
    )
    regex.compile_rule_regex.cache_clear()
    rules_module._compiled_template.cache_clear()

    def rules(title_pattern: str, template: str) -> RuleSet:
        return ruleset(
            *(
                a_rule(f"shared-{index}", when=[{"field": "title", "matches": "(?i)latency|errors"}])
                for index in range(50)
            ),
            a_rule("changing", when=[{"field": "title", "matches": title_pattern}]),
            a_rule(
                "templated",
                link={"relationship": "CAUSES", "parent": "event", "child": {"type": "CASE", "id": template}},
            ),
        )

    rules("down", "{{ payload.case }}")
    # One template; three patterns (the shared one, `down`, the case key), each compiled four ways.
    assert len(compiled) == 1 + 3 * 4

    compiled.clear()
    rules("down", "{{ payload.case }}")
    assert compiled == []

    rules("outage", "OPS-{{ payload.n }}")
    assert sorted(map(str, compiled)) == sorted(["OPS-{{ payload.n }}", "outage", "outage", "b'outage'", "b'outage'"])
