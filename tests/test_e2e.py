"""The whole path for real: gunicorn serving caselink, a SQLite file, HTTP to a fake Datadog."""

from __future__ import annotations

import json

import pytest

from tests.conftest import fixture_bytes
from tests.fake_datadog import case_uuid
from tests.servers import wait_for

pytestmark = pytest.mark.slow

INCIDENT = "01c03111-172a-50c7-8df3-d61e64b0e74b"


def test_incident_fixture_becomes_exactly_one_link_within_a_second(stack, fake_datadog):
    # Production settings: two gunicorn processes, one of them delivering.
    web = stack.service(WEB_CONCURRENCY="2", WORKER_POLL_INTERVAL="0.25")
    body = fixture_bytes("datadog", "incident-created.json")

    answer = web.post("datadog", body)

    assert answer.status_code == 202, answer.text
    assert answer.json()["links_planned"] == 1
    wait_for(lambda: fake_datadog.links, timeout=1.0, message="the link at the fake Datadog")
    for _ in range(5):
        again = web.post("datadog", body)
        assert again.status_code == 200
        assert again.json()["events"][0]["duplicate"] is True
    wait_for(lambda: web.api("/api/links?state=delivered").json()["links"], message="the delivered state")
    assert len(fake_datadog.creations()) == 1
    [link] = fake_datadog.links
    assert link["attributes"] == {
        "parent_entity_type": "INCIDENT",
        "parent_entity_id": INCIDENT,
        "relationship": "CAUSES",
        "child_entity_type": "CASE",
        "child_entity_id": case_uuid("OPS-42"),
    }
    [creation] = fake_datadog.creations()
    assert creation.body == {"data": {"type": "link", "attributes": link["attributes"]}}


def test_every_datadog_fixture_is_accepted_and_explained(stack, fake_datadog):
    fake_datadog.add_case("PAY-9", "9daaa414-8843-46e2-8360-c36d3713285f")
    web = stack.service()
    expected = {
        "incident-created.json": ("incident.created", 1),
        "page-escalated.json": ("page.escalated", 1),
        "monitor-alert.json": ("alert.triggered", 0),
    }
    for name, (kind, planned) in expected.items():
        answer = web.post("datadog", fixture_bytes("datadog", name))
        assert answer.status_code == 202, answer.text
        [event] = answer.json()["events"]
        assert (event["kind"], event["links_planned"]) == (kind, planned)
        explained = web.api(f"/api/events/{event['id']}").json()
        assert [rule["rule"] for rule in explained["rules"]] == [
            "incident-causes-mentioned-case",
            "page-escalates-to-mentioned-case",
            "case-relates-to-mentioned-case",
        ]
    wait_for(lambda: len(fake_datadog.links) == 2, message="two links")
    relationships = sorted(link["attributes"]["relationship"] for link in fake_datadog.links)
    assert relationships == ["CAUSES", "ESCALATES_TO"]


def test_form_encoded_datadog_webhook_is_read_like_json(stack, fake_datadog):
    web = stack.service()
    payload = json.loads(fixture_bytes("datadog", "incident-created.json"))
    form = {key: json.dumps(value) if isinstance(value, dict) else value for key, value in payload.items()}

    answer = web.http.post(
        f"{web.url}/webhooks/datadog", data=form, headers={"X-Webhook-Token": "hook-secret-for-tests"}, timeout=5
    )

    assert answer.status_code == 202, answer.text
    assert answer.json()["links_planned"] == 1
    wait_for(lambda: fake_datadog.links, message="the link")


def test_webhook_without_credentials_is_refused_and_leaves_no_trace(stack, fake_datadog):
    web = stack.service()
    body = fixture_bytes("datadog", "incident-created.json")

    missing = web.post("datadog", body, token=None)
    wrong = web.post("datadog", body, token="not-the-secret")

    assert missing.status_code == 401
    assert wrong.status_code == 401
    assert missing.json()["error"]["code"] == "unauthenticated"
    assert "hook-secret" not in wrong.text
    assert web.api("/api/events").json()["events"] == []
    assert "hook-secret-for-tests" not in web.logs()


def test_gunicorn_and_caselink_log_lines_both_reach_the_output(stack):
    web = stack.service(WEB_CONCURRENCY="2")
    web.post("datadog", fixture_bytes("datadog", "incident-created.json"))
    web.stop(timeout=15)

    output = web.logs()
    assert "Booting worker with pid" in output
    assert "Shutting down: Master" in output
    assert '"msg":"webhook"' in output
    assert "--- Logging error ---" not in output
