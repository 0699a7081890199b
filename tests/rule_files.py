"""Rules files, rules and events shared by the tests of the rule engine and of what uses it.

`generated_rules_text` makes issue 15's benchmark shape (bench/rules_scale.py): every rule for
Datadog incidents, with a severity `in`, a `tags.service` equality and a `matches` on the title,
and a `find` child; one rule in a hundred (the first included) is for the `payments-api` service.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from caselink.errors import RulesError
from caselink.events import EntityRef
from caselink.events import Event
from caselink.rules import Condition
from caselink.rules import RuleSet
from caselink.rules import parse_rules


def generated_rules_text(size: int) -> str:
    rules = [
        {
            "name": f"service-{index}",
            "on": {"source": "datadog", "kind": ["incident.created", "incident.updated"]},
            "when": [
                {"field": "severity", "in": ["SEV-1", "SEV-2"]},
                {"field": "tags.service", "equals": "payments-api" if index % 100 == 0 else f"service-{index}"},
                {"field": "title", "matches": "(?i)latency|errors|down"},
            ],
            "link": {
                "relationship": "CAUSES",
                "parent": "event",
                "child": {"type": "CASE", "find": {"in": ["title"], "pattern": "OPS-\\d+"}},
            },
        }
        for index in range(size)
    ]
    return json.dumps({"version": 1, "rules": rules})


ROOT = Path(__file__).resolve().parent.parent
INCIDENT_ID = "2f0c6a4e-8d1b-4c3a-9e5f-7a6b5c4d3e2f"
PAGE_ID = "15e74b8b-f865-48d0-bcc5-453323ed2c8f"
CASE_ID = "9daaa414-8843-46e2-8360-c36d3713285f"
CASE_KEY = r"\b[A-Z][A-Z0-9]{1,9}-\d+\b"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
INCIDENT = EntityRef("INCIDENT", INCIDENT_ID)


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


def write_rules(path: Path, *names: str) -> None:
    """Write a valid rules file and move its mtime on, so a change is seen even within one clock tick."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(yaml.safe_dump({"version": 1, "rules": [a_rule(name) for name in names]}), encoding="utf-8")
    stamp = max(path.stat().st_mtime_ns, before + 1_000_000_000)
    os.utime(path, ns=(stamp, stamp))


def costly_rules_text(count: int, child: str = "OPS-1") -> str:
    """`count` cheap Alertmanager rules: rule rN links CASE AM-N to CASE `child` for an alert whose
    title holds `<N>`. Each is cheap; asked of thousands of alerts together, they are not."""
    return "version: 1\nrules:\n" + "".join(
        f"  - name: r{index}\n    on: {{source: alertmanager}}\n"
        f"    when: [{{field: title, contains: '<{index}>'}}]\n"
        f"    link: {{relationship: CAUSES, parent: {{type: CASE, id: AM-{index}}},"
        f" child: {{type: CASE, id: {child}}}}}\n"
        for index in range(count)
    )


def alertmanager_group(summaries: list[str]) -> dict[str, Any]:
    """The Alertmanager fixture's group, with one alert for each summary (its title)."""
    group = json.loads((ROOT / "tests" / "fixtures" / "alertmanager" / "firing-group.json").read_text())
    alert = group["alerts"][0]
    group["alerts"] = [
        {**alert, "fingerprint": f"{n:016x}", "annotations": {"summary": summary}}
        for n, summary in enumerate(summaries)
    ]
    return group
