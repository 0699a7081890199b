"""The rule index: the indexed evaluation gives what the plain loop gives, visiting fewer rules."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from hypothesis import given
from hypothesis import reject
from hypothesis import strategies as st

from caselink import traces
from caselink.errors import RulesError
from caselink.events import EntityRef
from caselink.events import Event
from caselink.rules import RuleSet
from caselink.rules import parse_rules
from tests.rule_files import generated_rules_text

INCIDENT = EntityRef("INCIDENT", "01c03111-172a-50c7-8df3-d61e64b0e74b")
WORDS = ["high", "High", "low", "api", "db", "5", "OPS-7 down", ""]
FIELDS = ["severity", "status", "tags.service", "title", "payload.n", "kind", "source"]


def _value(draw: Any) -> Any:
    return draw(st.one_of(st.sampled_from([word for word in WORDS if word]), st.sampled_from([5, 5.0, 7])))


@st.composite
def conditions(draw: Any) -> dict[str, Any]:
    operator = draw(st.sampled_from(["equals", "in", "not_equals", "not_in", "contains", "matches", "gt", "exists"]))
    condition: dict[str, Any] = {"field": draw(st.sampled_from(FIELDS))}
    if operator in ("in", "not_in"):
        condition[operator] = [_value(draw) for _ in range(draw(st.integers(1, 3)))]
    elif operator == "matches":
        condition[operator] = draw(st.sampled_from(["(?i)high", "OPS-\\d+", "^$", "a|d"]))
    elif operator == "exists":
        condition[operator] = draw(st.booleans())
    elif operator == "gt":
        condition[operator] = draw(st.sampled_from([4, "4", "b"]))
    else:
        condition[operator] = _value(draw)
    if operator not in ("gt", "exists", "matches") and draw(st.booleans()):
        condition["ignore_case"] = True
    return condition


@st.composite
def rules_files(draw: Any) -> str:
    rules = []
    for index in range(draw(st.integers(0, 12))):
        rule: dict[str, Any] = {
            "name": f"r{index}",
            "link": {
                "relationship": "CAUSES",
                "parent": {"type": "CASE", "id": "OPS-1"},
                "child": {"type": "CASE", "find": {"in": ["title"], "pattern": "OPS-\\d+"}},
            },
        }
        on: dict[str, Any] = {}
        source = draw(st.sampled_from([None, "datadog", "alertmanager", "data*", ["datadog", "generic"]]))
        if source is not None:
            on["source"] = source
        kind = draw(
            st.sampled_from([None, "incident.created", ["incident.*"], ["alert.triggered", "incident.updated"]])
        )
        if kind is not None:
            on["kind"] = kind
        if on:
            rule["on"] = on
        items = draw(st.lists(conditions(), max_size=3))
        shape = draw(st.sampled_from(["list", "all", "any", "none", "nested"]))
        if items and shape == "list":
            rule["when"] = items
        elif items and shape == "nested":
            rule["when"] = {"all": [*items, {"any": items[:1]}]}
        elif items:
            rule["when"] = {shape: items}
        for key, values in (("stop", [True, False]), ("enabled", [True, False]), ("mode", ["live", "dry-run"])):
            if draw(st.booleans()):
                rule[key] = draw(st.sampled_from(values))
        rules.append(rule)
    # JSON is YAML: the file is written as the loader reads it, without quoting worries.
    return json.dumps({"version": 1, "rules": rules})


@st.composite
def events(draw: Any) -> Event:
    tags = {"service": draw(st.lists(st.sampled_from(WORDS), max_size=2))} if draw(st.booleans()) else {}
    payload = {"n": _value(draw)} if draw(st.booleans()) else None
    return Event(
        source=draw(st.sampled_from(["datadog", "alertmanager", "generic"])),
        kind=draw(st.sampled_from(["incident.created", "incident.updated", "alert.triggered"])),
        dedup_key="k",
        entity=INCIDENT,
        title=draw(st.sampled_from(WORDS)),
        severity=draw(st.sampled_from(WORDS)),
        status=draw(st.sampled_from(WORDS)),
        tags=tags,
        payload=payload,
    )


@given(rules_files(), st.lists(events(), min_size=1, max_size=4))
def test_indexed_evaluation_gives_the_plain_loops_matches_links_and_explanation(text, cases):
    try:
        ruleset = parse_rules(text)
    except RulesError:
        reject()  # a file the validator refuses is never evaluated
    # The same rule set meets several events, so the index's remembered selections are exercised too.
    for event in cases:
        indexed, linear = ruleset.evaluate(event), ruleset.evaluate_linear(event)

        assert [outcome.rule for outcome in indexed.matched] == [outcome.rule for outcome in linear.matched]
        assert indexed.links == linear.links
        assert [(outcome.rule, link) for outcome, link in indexed.planned] == [
            (outcome.rule, link) for outcome, link in linear.planned
        ]
        assert indexed.trace() == linear.trace()
        stored = json.loads(json.dumps(traces.stored_form(event, indexed)))
        assert traces.render(stored, event, ruleset) == linear.trace()


def _bench_like(size: int) -> RuleSet:
    return parse_rules(generated_rules_text(size))


def _incident(kind: str = "incident.created", **fields: Any) -> Event:
    return Event(
        "datadog",
        kind,
        "k",
        entity=INCIDENT,
        **{"title": "payments down, OPS-7", "severity": "SEV-1", "tags": {"service": ["payments-api"]}, **fields},
    )


def test_an_event_visits_only_the_rules_keyed_on_its_own_values():
    ruleset = _bench_like(1000)
    event = _incident()

    candidates = ruleset.index.candidates(event, event.fields())

    # The most telling key is tags.service (1,000 values), not severity (two shared by all).
    assert candidates == list(range(0, 1000, 100))
    assert len(ruleset.evaluate(event).matched) == 10


def test_rules_that_are_not_visited_are_still_explained_in_file_order():
    ruleset = _bench_like(200)
    event = _incident()

    explained = ruleset.evaluate(event).trace()

    assert [entry["rule"] for entry in explained] == [rule.name for rule in ruleset.rules]
    assert explained[1] == {
        "rule": "service-1",
        "outcome": "not_matched",
        "reason": 'when[1]: tags.service equals "service-1": tags.service is "payments-api"',
    }
    assert explained == ruleset.evaluate_linear(event).trace()


def test_an_event_from_another_source_visits_no_rule():
    ruleset = _bench_like(300)
    event = Event("alertmanager", "alert.firing", "k", title="down")

    assert ruleset.index.candidates(event, event.fields()) == []
    assert ruleset.evaluate(event).trace()[0]["outcome"] == "not_applicable"


def test_a_number_where_text_is_indexed_is_still_compared_by_value():
    ruleset = parse_rules(
        json.dumps(
            {
                "version": 1,
                "rules": [
                    {
                        "name": "five",
                        "when": [{"field": "payload.n", "equals": "5"}],
                        "link": {"relationship": "CAUSES", "parent": {"type": "CASE", "id": "OPS-1"}, "child": "event"},
                    }
                ],
            }
        )
    )

    matched = ruleset.evaluate(_incident(payload={"n": 5.0})).matched

    assert [outcome.rule for outcome in matched] == ["five"]


def test_a_stop_rule_ends_the_visit_and_the_rest_read_as_skipped():
    ruleset = _bench_like(300)
    stopping = RuleSet(
        tuple(replace(rule, stop=True) if rule.name == "service-100" else rule for rule in ruleset.rules)
    )
    event = _incident()

    evaluation = stopping.evaluate(event)

    assert [outcome.rule for outcome in evaluation.matched] == ["service-0", "service-100"]
    assert evaluation.trace()[200] == {
        "rule": "service-200",
        "outcome": "skipped",
        "reason": "rule 'service-100' has stop: true",
    }
    assert evaluation.trace() == stopping.evaluate_linear(event).trace()


def test_a_source_and_kind_seen_again_after_being_forgotten_selects_the_same_rules(monkeypatch):
    from caselink.rules import index as rule_index

    monkeypatch.setattr(rule_index, "SELECTIONS_KEPT", 2)
    ruleset = _bench_like(200)
    kinds = ["incident.created", "incident.updated", "alert.triggered", "incident.created"]

    selected = [ruleset.index.candidates(event, event.fields()) for event in (_incident(kind=kind) for kind in kinds)]

    assert selected == [[0, 100], [0, 100], [], [0, 100]]
