"""A rule set evaluating events: on.source and on.kind, file order, stop, enabled and mode
(caselink/rules/evaluation.py)."""

from __future__ import annotations

import re
import textwrap
import time

import pytest

from caselink.errors import RulesError
from caselink.rules import Rule
from caselink.rules import parse_rules
from tests.rule_files import INCIDENT_ID
from tests.rule_files import a_rule
from tests.rule_files import an_event
from tests.rule_files import only_problem
from tests.rule_files import outcome_of
from tests.rule_files import ruleset

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


# -- counts and checks that tell the truth (issue 12 §6) -----------------------------------------


def test_two_rules_planning_the_same_link_plan_one_link():
    rules = ruleset(a_rule("first"), a_rule("second"))

    evaluation = rules.evaluate(an_event(title="see OPS-42"))

    assert len(evaluation.planned) == 2
    assert [str(link) for link in evaluation.links] == [f"INCIDENT:{INCIDENT_ID} CAUSES CASE:OPS-42"]


def test_an_event_plans_at_most_a_hundred_links_all_rules_together_and_says_which_rule_lost_some():
    # Each rule plans one link of its own: 10,000 such rules were 10,000 links for every webhook.
    rules = ruleset(
        *(
            a_rule(
                f"r{n}", link={"relationship": "CAUSES", "parent": "event", "child": {"type": "CASE", "id": f"OPS-{n}"}}
            )
            for n in range(150)
        )
    )
    event = an_event(title="anything")

    evaluation = rules.evaluate(event)

    assert len(evaluation.links) == 100
    assert [str(link.child) for link in evaluation.links][-1] == "CASE:OPS-99"
    outcome = next(outcome for outcome in evaluation.matched if outcome.rule == "r100")
    assert outcome.links == []
    assert outcome.problems == [
        "link: more than 100 links for one event, all rules together; 1 of this rule's are not planned"
    ]
    assert [o.as_dict() for o in evaluation.outcomes] == [o.as_dict() for o in rules.evaluate_linear(event).outcomes]


# -- a webhook's events: evaluated within its time, the rest deferred ------------------------------


def test_a_webhooks_events_past_its_evaluation_time_are_deferred_with_no_link_and_a_reason():
    rules = ruleset(a_rule())
    events = [an_event(title=f"OPS-{n}") for n in range(5)]

    evaluations = rules.evaluate_webhook(events, seconds=0.0)

    assert [evaluation.deferred for evaluation in evaluations] == [True] * 5
    assert [len(evaluation.links) for evaluation in evaluations] == [0] * 5
    [waiting] = evaluations[1].trace()
    assert waiting["outcome"] == "deferred"
    assert waiting["reason"].startswith(
        "not evaluated yet: this webhook's events had used its 0 s of evaluation time (0 of 5 evaluated)"
    )


def test_one_event_whose_rules_take_longer_than_the_webhooks_time_is_stopped_among_its_rules_and_deferred():
    # 2,000 rules of two long conditions each on a 100 KB message: a second or more for one event.
    rules = ruleset(
        *(
            a_rule(f"r{n}", when=[{"field": "message", "contains": f"id-{n}.", "ignore_case": True}])
            for n in range(2000)
        )
    )
    event = an_event(title="OPS-1", message="x" * 100_000 + " ".join(f"id-{n}." for n in range(2000)))

    started = time.thread_time()
    [evaluation] = rules.evaluate_webhook([event], seconds=0.05)
    spent = time.thread_time() - started
    whole = time.thread_time()
    alone = rules.evaluate(event)
    whole = time.thread_time() - whole

    assert evaluation.deferred
    assert len(alone.matched) == 2000
    # Stopped within a few rules of its deadline, where the whole evaluation takes far longer.
    assert spent < whole / 3


def test_a_webhooks_events_within_its_evaluation_time_are_each_evaluated_as_alone():
    rules = ruleset(a_rule())
    events = [an_event(title=f"OPS-{n}") for n in range(5)]

    together = rules.evaluate_webhook(events)

    assert not any(evaluation.deferred for evaluation in together)
    assert [evaluation.links for evaluation in together] == [rules.evaluate(event).links for event in events]
