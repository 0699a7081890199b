"""load_rules and parse_rules: files on disk, the repository's rules.yaml, compiling once
(caselink/rules/loading.py)."""

from __future__ import annotations

import gc
import json
import weakref
from typing import Any

import pytest
import yaml

from caselink.errors import RulesError
from caselink.events import Event
from caselink.events import Headers
from caselink.events import WebhookRequest
from caselink.rules import PlannedLink
from caselink.rules import RuleSet
from caselink.rules import load_rules
from caselink.rules import parse_rules
from handlers import REGISTRY
from tests.conftest import fixture_json
from tests.rule_files import CASE_ID
from tests.rule_files import PAGE_ID
from tests.rule_files import ROOT
from tests.rule_files import a_rule
from tests.rule_files import ruleset

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


def test_a_reload_compiles_only_the_patterns_and_templates_it_has_not_seen(monkeypatch):
    from caselink import regex
    from caselink.rules import validation

    compiled: list[Any] = []
    real_compile = regex.re2.compile
    monkeypatch.setattr(regex.re2, "compile", lambda pattern, *a: compiled.append(pattern) or real_compile(pattern, *a))
    real_template = validation._templates.from_string
    monkeypatch.setattr(
        validation._templates, "from_string", lambda source: compiled.append(source) or real_template(source)
    )
    validation._compiled_template.cache_clear()
    monkeypatch.setattr(regex, "_COMPILED", weakref.WeakValueDictionary())

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

    in_force = rules("down", "{{ payload.case }}")
    # One template; three patterns (the shared one, `down`, the case key), each compiled two ways.
    assert len(compiled) == 1 + 3 * 2

    compiled.clear()
    in_force = rules("down", "{{ payload.case }}")
    assert compiled == []

    in_force = rules("outage", "OPS-{{ payload.n }}")
    assert sorted(map(str, compiled)) == sorted(["OPS-{{ payload.n }}", "b'outage'", "b'outage'"])
    # The replaced rules' pattern (and the DFA memory RE2 built for it) went with them.
    gc.collect()
    assert ("down", False) not in regex._COMPILED
    assert ("outage", False) in regex._COMPILED
    assert in_force.rules
