"""Stored traces: compact when the rule set is stored, rendered into the same sentences when read."""

from __future__ import annotations

import gc
import json
import weakref

from caselink import traces
from caselink.events import EntityRef
from caselink.events import Event
from caselink.rules import Evaluation
from caselink.rules import RuleOutcome
from caselink.rules import parse_rules
from tests.rule_files import generated_rules_text

INCIDENT = EntityRef("INCIDENT", "01c03111-172a-50c7-8df3-d61e64b0e74b")


def incident(dedup_key: str = "k", **fields) -> Event:
    return Event(
        "datadog",
        "incident.created",
        dedup_key,
        entity=INCIDENT,
        **{"title": "payments down, OPS-7", "severity": "SEV-1", "tags": {"service": ["payments-api"]}, **fields},
    )


def test_the_stored_trace_of_a_thousand_rules_is_under_two_kilobytes_and_reads_as_the_full_one():
    ruleset = parse_rules(generated_rules_text(1000))
    event = incident()
    evaluation = ruleset.evaluate(event)

    stored = json.loads(json.dumps(traces.stored_form(event, evaluation)))

    assert len(json.dumps(stored, separators=(",", ":"))) <= 2048
    assert stored["rule_set"] == ruleset.digest
    assert [entry["index"] for entry in stored["matched"]] == list(range(0, 1000, 100))
    assert traces.render(stored, event, ruleset) == ruleset.evaluate_linear(event).trace()


def test_an_evaluation_without_a_stored_rule_set_is_kept_in_full_and_read_as_it_is():
    evaluation = Evaluation([RuleOutcome("r", "not_matched", "title does not contain 'x'")])

    stored = traces.stored_form(incident(), evaluation)

    assert stored == [{"rule": "r", "outcome": "not_matched", "reason": "title does not contain 'x'"}]
    assert traces.render(stored, incident(), None) == stored


def test_an_event_with_a_field_longer_than_its_column_is_cut_when_made_and_keeps_a_compact_trace():
    # A 256-character severity stored every rule's outcome in full: 0.4 MB an event, 8 s a webhook.
    ruleset = parse_rules(generated_rules_text(300))
    event = incident(severity="S" * 300, status="x" * 300, occurred_at="2" * 100)

    stored = traces.stored_form(event, ruleset.evaluate(event))

    assert (len(event.severity), len(event.status), len(event.occurred_at or "")) == (255, 255, 64)
    assert isinstance(stored, dict)
    assert len(json.dumps(stored)) < 2048
    assert traces.render(stored, event, ruleset) == ruleset.evaluate_linear(event).trace()


def test_a_compact_trace_whose_rule_set_is_not_stored_lists_what_matched_and_says_the_rest_is_unknown():
    ruleset = parse_rules(generated_rules_text(200))
    event = incident()
    stored = traces.stored_form(event, ruleset.evaluate(event))

    rendered = traces.render(stored, event, None)

    assert [entry["rule"] for entry in rendered] == ["service-0", "service-100", "(other rules)"]
    assert rendered[-1]["outcome"] == "unknown"
    assert ruleset.digest[:12] in rendered[-1]["reason"]


def test_links_added_by_replay_are_read_after_every_rule_and_counted_with_the_matches():
    ruleset = parse_rules(generated_rules_text(3))
    event = incident()
    stored = traces.stored_form(event, ruleset.evaluate(event))
    added = {"rule": "later", "outcome": "matched", "reason": "planned by `replay --apply`", "links": []}

    stored = traces.with_added(stored, [added])

    assert traces.render(stored, event, ruleset)[-1] == added
    assert [entry["rule"] for entry in traces.matched_entries(stored)] == ["service-0", "later"]


def test_a_full_trace_made_by_the_rule_set_compacts_only_when_it_reads_the_same():
    ruleset = parse_rules(generated_rules_text(150))
    event = incident()
    full = ruleset.evaluate_linear(event).trace()

    compact = traces.compacted(full, event, ruleset)

    assert compact is not None
    assert traces.render(compact, event, ruleset) == full
    # Another event's trace, or another rule set's, is left as it is.
    assert traces.compacted(full, incident(tags={"service": ["billing"]}), ruleset) is None
    assert traces.compacted(full, event, parse_rules(generated_rules_text(151))) is None


def test_the_rule_set_cache_parses_stored_text_once_and_refuses_text_that_is_not_the_digests():
    ruleset = parse_rules(generated_rules_text(2))
    cache = traces.RuleSetCache()
    reads = []

    def text(digest: str) -> str:
        reads.append(digest)
        return ruleset.text

    first = cache.get(ruleset.digest, text)
    again = cache.get(ruleset.digest, text)

    assert first is not None
    assert again is first
    assert reads == [ruleset.digest]
    assert cache.get("0" * 64, text) is None


def test_the_rule_set_cache_lets_go_of_a_replaced_rule_set_in_force():
    # It kept the last two it saw: reverting a huge rule set left its worker at 730 MB.
    cache = traces.RuleSetCache()
    huge, small = parse_rules(generated_rules_text(300)), parse_rules(generated_rules_text(2))
    cache.use(small)
    cache.use(huge)
    assert cache.get(huge.digest, lambda digest: None) is huge
    cache.use(small)
    gone = weakref.ref(huge)

    del huge
    gc.collect()

    assert gone() is None
    assert cache.get(small.digest, lambda digest: None) is small
