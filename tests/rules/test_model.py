"""Rules once loaded, each on its own: conditions and their operators, list and missing fields,
when groups, refs and field paths (caselink/rules/model.py)."""

from __future__ import annotations

import re

import pytest

from caselink.errors import RulesError
from caselink.events import EntityRef
from caselink.rules import OPERATORS
from caselink.rules import FieldPath
from caselink.rules import PlannedLink
from caselink.rules import RefSpec
from tests.rule_files import CASE_ID
from tests.rule_files import CASE_KEY
from tests.rule_files import INCIDENT
from tests.rule_files import INCIDENT_ID
from tests.rule_files import PAGE_ID
from tests.rule_files import UUID
from tests.rule_files import a_rule
from tests.rule_files import an_event
from tests.rule_files import condition
from tests.rule_files import holds
from tests.rule_files import only_problem
from tests.rule_files import outcome_of
from tests.rule_files import planned
from tests.rule_files import ruleset

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
