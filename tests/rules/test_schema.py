"""rules.schema.json: editors check rules.yaml with it, so it must agree with the engine."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from caselink.errors import RulesError
from caselink.events import ENTITY_TYPES
from caselink.events import FIELD_NAMES
from caselink.events import RELATIONSHIPS
from caselink.rules import MODES
from caselink.rules import OPERATORS
from caselink.rules import parse_rules
from caselink.rules.reader import Loader

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "rules.schema.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
LINK = {"relationship": "CAUSES", "parent": "event", "child": {"type": "CASE", "id": "OPS-1"}}


def read_as_the_engine_does(text: str) -> Any:
    """The YAML as plain JSON data, read by the engine's loader (YAML 1.1 would make `on:` the key True)."""
    loader = Loader(text)
    try:
        return json.loads(json.dumps(loader.get_single_data()))
    finally:
        loader.dispose()


def schema_errors(document: Any) -> list[str]:
    return [error.message for error in VALIDATOR.iter_errors(document)]


def a_file(**rule: Any) -> dict[str, Any]:
    return {"version": 1, "rules": [{"name": "r", "link": LINK, **rule}]}


def test_the_schema_is_a_valid_draft_2020_12_schema():
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_the_repository_rules_yaml_satisfies_the_schema():
    text = (ROOT / "rules.yaml").read_text(encoding="utf-8")

    assert schema_errors(read_as_the_engine_does(text)) == []
    parse_rules(text, "rules.yaml", sources=("datadog",))


def test_the_repository_rules_yaml_points_editors_at_the_schema():
    first_line = (ROOT / "rules.yaml").read_text(encoding="utf-8").splitlines()[0]

    assert first_line == "# yaml-language-server: $schema=./rules.schema.json"


def test_a_yaml_11_reading_of_on_is_caught_by_the_schema():
    text = (
        "version: 1\n"
        "rules:\n"
        "  - name: r\n"
        "    on: {source: datadog}\n"
        "    link: {relationship: CAUSES, parent: event, child: {type: CASE, id: OPS-1}}\n"
    )
    yaml11 = yaml.safe_load(text)

    assert True in yaml11["rules"][0]
    assert schema_errors(yaml11) != []
    assert schema_errors(read_as_the_engine_does(text)) == []


def test_the_schema_lists_the_engines_operators_relationships_entity_types_and_modes():
    definitions = SCHEMA["$defs"]

    assert set(definitions["condition"]["properties"]) == {"field", "ignore_case", *OPERATORS}
    assert [option["required"][0] for option in definitions["condition"]["oneOf"]] == list(OPERATORS)
    assert definitions["relationship"]["enum"] == list(RELATIONSHIPS)
    assert definitions["entityType"]["enum"] == list(ENTITY_TYPES)
    assert definitions["nonCaseRef"]["properties"]["type"]["enum"] == [t for t in ENTITY_TYPES if t != "CASE"]
    assert definitions["rule"]["properties"]["mode"]["enum"] == list(MODES)
    field_names = re.match(r"\^\(([^)]*)\)", definitions["fieldPath"]["pattern"]).group(1).split("|")
    assert field_names == list(FIELD_NAMES)


VALID = {
    "minimal": a_file(),
    "every rule key": a_file(
        description="d",
        on={"source": ["datadog"], "kind": "incident.*"},
        when=[{"field": "severity", "in": ["SEV-1", "SEV-2"]}],
        stop=True,
        enabled=False,
        mode="dry-run",
        examples=[
            {"payload": {"event": "incident.created"}, "links": []},
            {
                "source": "datadog",
                "payload": {},
                "links": [
                    {
                        "parent": "incident:2f0c6a4e-8d1b-4c3a-9e5f-7a6b5c4d3e2f",
                        "relationship": "CAUSES",
                        "child": "CASE:OPS-1",
                    }
                ],
            },
        ],
    ),
    "on null": a_file(on=None),
    "nested groups": a_file(
        when={
            "all": [{"field": "severity", "equals": "SEV-1"}, {"any": [{"field": "tags.team", "exists": True}]}],
            "none": [{"field": "title", "contains": "[test]", "ignore_case": True}],
        }
    ),
    "one condition": a_file(when={"field": "payload.count", "gte": 3}),
    "every operator": a_file(
        when=[
            {"field": "title", "equals": "x"},
            {"field": "title", "not_equals": 5},
            {"field": "title", "in": ["a", 1, True]},
            {"field": "title", "not_in": ["b"]},
            {"field": "title", "contains": "c"},
            {"field": "title", "not_contains": "d"},
            {"field": "title", "starts_with": "e"},
            {"field": "title", "ends_with": "f"},
            {"field": "title", "matches": "^g"},
            {"field": "title", "not_matches": "h$"},
            {"field": "title", "exists": False},
            {"field": "payload.n", "gt": 1},
            {"field": "payload.n", "gte": 1.5},
            {"field": "occurred_at", "lt": "2030-01-01"},
            {"field": "payload.n", "lte": "9"},
            {"field": "payload.n", "gt": 1, "ignore_case": False},
        ]
    ),
    "find in one field": a_file(
        link={
            "relationship": "CAUSES",
            "parent": "event",
            "child": {"type": "CASE", "find": {"in": "title", "pattern": "x"}},
        }
    ),
    "template id": a_file(
        link={
            "relationship": "RELATES_TO",
            "parent": {"type": "CASE", "id": "{{ payload.case.uuid }}"},
            "child": {
                "type": "INCIDENT",
                "find": {"in": ["payload.refs[0]", 'payload["a.b"]'], "pattern": "(?P<ref>x)"},
            },
        }
    ),
}


@pytest.mark.parametrize("document", VALID.values(), ids=VALID.keys())
def test_a_valid_file_is_accepted_by_both_the_engine_and_the_schema(document):
    text = yaml.safe_dump(document, sort_keys=False)

    parse_rules(text, "rules.yaml", sources=("datadog",))
    assert schema_errors(read_as_the_engine_does(text)) == []


BROKEN = {
    "wrong version": ({"version": 2, "rules": []}, "1 was expected"),
    "unknown top-level key": ({"version": 1, "rules": [], "rule": []}, "'rule' was unexpected"),
    "unknown rule key": (a_file(whn=[{"field": "title", "exists": True}]), "'whn' was unexpected"),
    "rule name with spaces": ({"version": 1, "rules": [{"name": "has spaces", "link": LINK}]}, "does not match"),
    "no link": ({"version": 1, "rules": [{"name": "r"}]}, "'link' is a required property"),
    "unknown operator": (a_file(when=[{"field": "title", "equal": "x"}]), "'equal' was unexpected"),
    "two operators": (a_file(when=[{"field": "title", "equals": "x", "contains": "y"}]), "is valid under each of"),
    "no operator": (a_file(when=[{"field": "title"}]), "is not valid under any of the given schemas"),
    "field that is no event field": (a_file(when=[{"field": "titel", "equals": "x"}]), "'titel' does not match"),
    "empty in": (a_file(when=[{"field": "title", "in": []}]), "[] should be non-empty"),
    "exists that is not boolean": (a_file(when=[{"field": "title", "exists": "yes"}]), "not of type 'boolean'"),
    "ignore_case on gt": (a_file(when=[{"field": "payload.n", "gt": 1, "ignore_case": True}]), "should not be valid"),
    "empty when": (a_file(when=[]), "[] should be non-empty"),
    "unknown group key": (a_file(when={"al": [{"field": "title", "exists": True}]}), "'al' was unexpected"),
    "bad relationship": (a_file(link={**LINK, "relationship": "CAUSE"}), "'CAUSE' is not one of"),
    "bad entity type": (a_file(link={**LINK, "child": {"type": "case", "id": "OPS-1"}}), "'case' is not one of"),
    "ref that is not event": (a_file(link={**LINK, "parent": "events"}), "'event' was expected"),
    "event linked to itself": (a_file(link={**LINK, "child": "event"}), "should not be valid"),
    "no CASE side": (
        a_file(
            link={
                "relationship": "CAUSES",
                "parent": {"type": "INCIDENT", "id": "{{ entity.id }}"},
                "child": {"type": "PAGE", "id": "{{ payload.page }}"},
            }
        ),
        "should not be valid",
    ),
    "id and find together": (
        a_file(link={**LINK, "child": {"type": "CASE", "id": "OPS-1", "find": {"in": ["title"], "pattern": "x"}}}),
        "'find' was unexpected",
    ),
    "unknown find key": (
        a_file(link={**LINK, "child": {"type": "CASE", "find": {"in": ["title"], "pattern": "x", "flags": "i"}}}),
        "'flags' was unexpected",
    ),
    "bad mode": (a_file(mode="shadow"), "'shadow' is not one of"),
    "stop that is not boolean": (a_file(stop="yes"), "not of type 'boolean'"),
    "example without links": (a_file(examples=[{"source": "datadog", "payload": {}}]), "'links' is a required"),
    "example link that is no TYPE:ID": (
        a_file(
            examples=[
                {
                    "source": "datadog",
                    "payload": {},
                    "links": [{"parent": "OPS-1", "relationship": "CAUSES", "child": "CASE:OPS-2"}],
                }
            ]
        ),
        "'OPS-1' does not match",
    ),
}


@pytest.mark.parametrize(("document", "complaint"), BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_file_is_rejected_by_both_the_engine_and_the_schema(document, complaint):
    text = yaml.safe_dump(document, sort_keys=False)

    with pytest.raises(RulesError):
        parse_rules(text, "rules.yaml", sources=("datadog",))
    errors = schema_errors(read_as_the_engine_does(text))
    assert any(complaint in error for error in errors), errors
