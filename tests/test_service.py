"""The ingest service: its start-up checks, and what a webhook's 202, its explain record and `rules explain` count."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from caselink import migrations
from caselink.config import Secret
from caselink.service import preflight
from handlers import REGISTRY
from tests.conftest import ROOT
from tests.rule_files import alertmanager_group
from tests.rule_files import costly_rules_text
from tests.servers import ADMIN_TOKEN
from tests.servers import WEBHOOK_SECRET

INCIDENT_PAYLOAD = ROOT / "tests" / "fixtures" / "datadog" / "incident-created.json"
CASE_KEY = r"\b[A-Z][A-Z0-9]{1,9}-\d+\b"


def twin_rules(path: Path) -> Path:
    """Two rules that plan the same link for the sample incident."""
    rule = {
        "on": {"source": "datadog"},
        "link": {
            "relationship": "CAUSES",
            "parent": "event",
            "child": {"type": "CASE", "find": {"in": ["title", "message"], "pattern": CASE_KEY}},
        },
    }
    document = {"version": 1, "rules": [{"name": "first", **rule}, {"name": "second", **rule}]}
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def twin_app(settings, tmp_path):
    from app import create_app

    application = create_app(replace(settings, rules_file=twin_rules(tmp_path / "rules.yaml")))
    service = application.extensions["caselink"]
    migrations.upgrade(service.store.engine)
    yield application
    service.store.dispose()


def test_two_rules_planning_one_link_count_one_in_the_answer_and_the_explain_record(twin_app):
    client = twin_app.test_client()

    answer = client.post(
        "/webhooks/datadog",
        data=INCIDENT_PAYLOAD.read_bytes(),
        headers={"Authorization": f"Bearer {WEBHOOK_SECRET}"},
        content_type="application/json",
    )
    record = client.get(
        f"/api/events/{answer.json['events'][0]['id']}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ).json

    assert answer.status_code == 202
    assert answer.json["links_planned"] == 1
    assert answer.json["events"][0]["links_planned"] == 1
    assert record["links_planned"] == 1
    assert [rule["outcome"] for rule in record["rules"]] == ["matched", "matched"]
    assert len({link["id"] for link in record["links"]}) == 1  # listed once per rule that planned it


def test_rules_explain_counts_two_rules_planning_one_link_once(runner, tmp_path):
    rules = twin_rules(tmp_path / "rules.yaml")

    text = runner.invoke(args=["rules", "explain", "datadog", str(INCIDENT_PAYLOAD), "--rules", str(rules)])
    as_json = runner.invoke(
        args=["rules", "explain", "datadog", str(INCIDENT_PAYLOAD), "--rules", str(rules), "--json"]
    )

    assert text.exit_code == 0, text.output
    assert text.output.splitlines()[-1] == "  1 link(s) planned"
    assert len(json.loads(as_json.output)[0]["links"]) == 1


def test_preflight_warns_the_operator_of_each_on_kind_not_in_canonical_form(app, settings, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        """version: 1
rules:
  - name: no-data
    on: {source: datadog, kind: alert.No Data}
    link: {relationship: RELATES_TO, parent: {type: CASE, id: OPS-1}, child: {type: CASE, id: OPS-2}}
"""
    )

    notes = preflight(replace(settings, rules_file=rules), REGISTRY)

    assert notes[:2] == [
        f"1 rules loaded from {rules}",
        # The "warning: " prefix is what makes the start-up log write it at level warning (gunicorn.conf.py).
        f"warning: {rules}:4: rule 'no-data': warning: on.kind 'alert.No Data' is not in canonical form;"
        " it matches as 'alert.no_data'",
    ]


def alertmanager_app(settings, tmp_path, rules_text: str):
    """caselink with these rules and an Alertmanager secret, its database migrated."""
    from app import create_app

    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_text, encoding="utf-8")
    application = create_app(
        replace(settings, rules_file=rules, webhook_secrets={"alertmanager": (Secret(WEBHOOK_SECRET),)})
    )
    migrations.upgrade(application.extensions["caselink"].store.engine)
    return application


def test_the_events_of_one_webhook_share_a_search_budget_so_a_big_group_cannot_hold_it_for_long(settings, tmp_path):
    # 80 alerts, each with a value a pattern RE2 runs slowly on (~25 ms each): under the per-event
    # budget alone every event searched its value (2 s here; 400 events took 43 s).
    from tests import hostile_rules as hostile

    application = alertmanager_app(
        settings,
        tmp_path,
        "version: 1\nrules:\n  - name: slow\n    on: {source: alertmanager}\n"
        f"    when: [{{field: title, matches: '{hostile.SLOW_ON_AB}'}}]\n"
        "    link: {relationship: CAUSES, parent: event, child: {type: CASE, id: OPS-1}}\n",
    )
    service = application.extensions["caselink"]
    group = alertmanager_group([hostile.AB_64K[n : n + 4000] for n in range(80)])

    client = application.test_client()

    started = time.thread_time()
    answer = client.post("/webhooks/alertmanager", json=group, headers={"Authorization": f"Bearer {WEBHOOK_SECRET}"})
    cpu = time.thread_time() - started
    service.store.dispose()

    assert answer.status_code == 202, answer.json
    assert len(answer.json["events"]) == 80
    # The 80 searches take about two seconds together; the webhook's budget is half a second.
    assert cpu < 1.2


def test_a_webhook_whose_events_cost_more_than_a_request_may_spend_is_stored_whole_and_evaluated_beside_delivery(
    settings, tmp_path
):
    # 4,000 cheap rules against a group of 800 alerts: ~3 s of evaluation (59 s for a tester's
    # 9,999 rules and 2,000 alerts) before the answer, while the sender waits and then retries.
    from caselink.rules import EVALUATION_SECONDS_PER_WEBHOOK

    application = alertmanager_app(settings, tmp_path, costly_rules_text(4000))
    service = application.extensions["caselink"]
    group = alertmanager_group([f"disk full <{n}>" for n in range(800)])
    client = application.test_client()

    started = time.thread_time()
    answer = client.post("/webhooks/alertmanager", json=group, headers={"Authorization": f"Bearer {WEBHOOK_SECRET}"})
    cpu = time.thread_time() - started

    assert answer.status_code == 202, answer.json
    evaluated = [event for event in answer.json["events"] if "evaluation" not in event]
    deferred = [event for event in answer.json["events"] if event.get("evaluation") == "deferred"]
    assert len(evaluated) + len(deferred) == 800
    assert evaluated
    assert deferred
    assert all(event["links_planned"] == 1 for event in evaluated)
    assert all(event["links_planned"] == 0 for event in deferred)
    assert cpu < EVALUATION_SECONDS_PER_WEBHOOK + 1.0
    waiting = service.store.get_event(deferred[0]["id"])["rules"]
    assert [entry["outcome"] for entry in waiting] == ["deferred"]
    assert "housekeeping evaluates" in waiting[0]["reason"]
    # Per-rule statistics wait for the deferred events rather than count them as matching nothing.
    service.store.count_rule_stats(limit=1000)
    assert sum(stats.matched for stats in service.store.rule_stats(None).values()) == len(evaluated)

    while service.evaluate_deferred(100):
        pass

    assert service.store.deferred_events() == []
    # One distinct link for each alert, planned in the request or beside delivery.
    assert sum(service.store.count_links().values()) == 800
    for event in deferred[:20]:
        record = service.store.get_event(event["id"])
        assert [entry["rule"] for entry in record["rules"] if entry["outcome"] == "matched"] == [
            f"r{record['title'].rsplit('<', 1)[1].rstrip('>')}"
        ]
        assert len(record["links"]) == 1
    service.store.count_rule_stats(limit=1000)
    assert sum(stats.matched for stats in service.store.rule_stats(None).values()) == 800
    service.store.dispose()


def test_events_whose_searches_the_webhooks_budget_cut_are_deferred_not_left_without_their_links(settings, tmp_path):
    # A tester's mix: one rule's slow pattern on each alert's message spends the webhook's 0.5 s
    # of search time; another rule's cheap find on the title then went unsearched, and 33 of 40
    # alerts evaluated in the request planned no link, while the deferred ones did.
    from tests import hostile_rules as hostile

    application = alertmanager_app(
        settings,
        tmp_path,
        "version: 1\nrules:\n"
        "  - name: slow\n    on: {source: alertmanager}\n"
        f"    when: [{{field: message, matches: '{hostile.SLOW_ON_AB}'}}]\n"
        "    link: {relationship: CAUSES, parent: {type: CASE, id: SLOW-1}, child: {type: CASE, id: OPS-1}}\n"
        "  - name: cheap\n    on: {source: alertmanager}\n"
        "    link: {relationship: CAUSES, parent: {type: CASE, find: {in: [title], pattern: 'AM-[0-9]+'}},"
        " child: {type: CASE, id: OPS-1}}\n",
    )
    service = application.extensions["caselink"]
    group = alertmanager_group([f"disk full AM-{n}" for n in range(30)])
    for n, alert in enumerate(group["alerts"]):
        alert["annotations"]["description"] = hostile.AB_64K[n : n + 8192]

    answer = application.test_client().post(
        "/webhooks/alertmanager", json=group, headers={"Authorization": f"Bearer {WEBHOOK_SECRET}"}
    )
    while service.evaluate_deferred(100):
        pass

    assert answer.status_code == 202, answer.json
    assert any(event.get("evaluation") == "deferred" for event in answer.json["events"])
    for event in answer.json["events"]:
        record = service.store.get_event(event["id"])
        [cheap] = [entry for entry in record["rules"] if entry["rule"] == "cheap"]
        assert [link["parent"] for link in cheap["links"]] == [f"CASE:{record['title'].rsplit(' ', 1)[1]}"], cheap
    service.store.dispose()
