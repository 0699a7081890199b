"""docs/senders.md stays true: its rules load and pass their examples, its signing snippet signs."""

from __future__ import annotations

import json
import re
import sys
import time
import types

import pytest

from caselink.rules import load_rules
from handlers import REGISTRY
from handlers import generic
from tests.conftest import FIXTURES
from tests.docs import SENDERS as SENDERS_DOC
from tests.docs import section
from tests.handlers.conftest import policy
from tests.handlers.conftest import webhook

SENDERS = ("pagerduty", "opsgenie", "alertmanager", "grafana", "generic")


def senders_section() -> str:
    return section(SENDERS_DOC, "Other senders")


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", senders_section(), flags=re.MULTILINE | re.DOTALL)


@pytest.fixture(name="doc_rules")
def _doc_rules(tmp_path):
    """The example rules of every section, under `rules:` as the doc says to put them."""
    blocks = [block for block in code_blocks("yaml") if re.search(r"^    link:$", block, flags=re.MULTILINE)]
    path = tmp_path / "doc-rules.yaml"
    path.write_text("version: 1\nrules:\n" + "\n".join(blocks))
    return path


def test_there_is_one_example_rule_per_sender_and_each_loads(doc_rules):
    ruleset = load_rules(doc_rules, sources=tuple(REGISTRY))

    assert sorted(source for rule in ruleset.rules for source in rule.sources) == sorted(SENDERS)
    assert all(rule.examples for rule in ruleset.rules)


def test_the_example_rules_pass_their_examples(runner, doc_rules):
    result = runner.invoke(args=["rules", "test", str(doc_rules)])

    assert result.exit_code == 0, result.output
    assert re.search(r"^(\d+) of \1 examples passed$", result.output, flags=re.MULTILINE), result.output


@pytest.mark.parametrize("source", SENDERS)
def test_each_senders_fixture_plans_exactly_one_link_under_the_example_rules(runner, doc_rules, source):
    for fixture in sorted((FIXTURES / source).glob("*.json")):
        result = runner.invoke(args=["rules", "explain", source, str(fixture), "--rules", str(doc_rules), "--json"])

        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert [event["event"]["kind"] for event in report if event["event"]["problem"]] == []
        assert sum(len(event["links"]) for event in report) == 1, result.output


def test_the_python_signing_snippet_signs_as_the_handler_checks(monkeypatch):
    [snippet] = code_blocks("python")
    secret = "whsec_ZG9jdW1lbnRlZC1zZWNyZXQtZm9yLXRlc3Rz"
    sent = {}
    monkeypatch.setenv("GENERIC_WEBHOOK_SECRET", secret)
    fake_requests = types.SimpleNamespace(post=lambda url, **kwargs: sent.update(url=url, **kwargs))
    monkeypatch.setitem(sys.modules, "requests", fake_requests)

    exec(compile(snippet, str(SENDERS_DOC), "exec"), {})  # noqa: S102 - the doc's own example, run as a reader would

    request = webhook("generic", sent["data"].encode(), sent["headers"], received_at=time.time())
    generic.authenticate(request, policy("generic", secret, now=time.time()))
    [event] = generic.normalise(generic.parse(request), request)
    assert (event.kind, str(event.entity)) == ("incident.created", "INCIDENT:3b1f0c2e-9a7d-4e55-8c21-6f0e2d9a1b44")
    assert sent["url"].endswith("/webhooks/generic")
