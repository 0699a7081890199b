"""Intake through the real service (gunicorn on loopback): real payload shapes that once broke caselink.

Each case of tests/fixtures/intake/README.md is a test here. Every test is
self-contained: its secrets, helpers and rules are its own.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.conftest import fixture_bytes
from tests.fake_datadog import case_uuid
from tests.handlers.conftest import grafana_signature
from tests.handlers.conftest import pagerduty_signature
from tests.handlers.conftest import standard_headers
from tests.senders import SOURCES
from tests.senders import notification
from tests.servers import wait_for

pytestmark = pytest.mark.slow


# -- dedup: a key must never merge two different notifications ----------------------------


def dedup_secrets() -> dict[str, str]:
    return {
        "PAGERDUTY_WEBHOOK_SECRET": "pd-dedup-secret",
        "OPSGENIE_WEBHOOK_SECRET": "og-dedup-token",
        "ALERTMANAGER_WEBHOOK_SECRET": "am-dedup-token",
        "GRAFANA_WEBHOOK_SECRET": "gf-dedup-secret",
        "GENERIC_WEBHOOK_SECRET": "whsec_ZGVkdXAtc3RhbmRhcmQtd2ViaG9va3Mtc2VjcmV0",
    }


def dedup_post(web, source: str, body: bytes, headers: dict[str, str] | None = None):
    """POST `body` to `source`, authenticated the way that sender does it."""
    secrets = dedup_secrets()
    headers = dict(headers or {})
    if source == "pagerduty":
        headers["X-PagerDuty-Signature"] = pagerduty_signature(body, secrets["PAGERDUTY_WEBHOOK_SECRET"])
        return web.post(source, body, headers=headers, token=None)
    if source == "grafana":
        stamp = str(int(time.time()))
        headers["X-Grafana-Alerting-Signature"] = grafana_signature(body, secrets["GRAFANA_WEBHOOK_SECRET"], stamp)
        headers["X-Grafana-Alerting-Timestamp"] = stamp
        return web.post(source, body, headers=headers, token=None)
    if source == "generic":
        msg_id = headers.pop("webhook-id")
        headers.update(standard_headers(msg_id, time.time(), body, secrets["GENERIC_WEBHOOK_SECRET"]))
        return web.post(source, body, headers=headers, token=None)
    token = secrets.get(f"{source.upper()}_WEBHOOK_SECRET")
    return web.post(source, body, headers=headers, **({"token": token} if token else {}))


def dedup_conflicts_counted(web) -> dict[str, float]:
    text = web.http.get(web.url + "/metrics", timeout=10).text
    found = re.findall(r'^caselink_dedup_conflicts_total\{source="(\w+)"\} ([0-9.e+]+)$', text, re.MULTILINE)
    return {source: float(count) for source, count in found}


def test_opsgenie_escalations_of_one_alert_to_a_user_then_to_a_team_are_two_events(stack):
    web = stack.service(**dedup_secrets())
    to_user, to_team = (fixture_bytes("intake", f"og-escalate-{number}.json") for number in (1, 2))

    first = dedup_post(web, "opsgenie", to_user)
    second = dedup_post(web, "opsgenie", to_team)

    assert (first.status_code, second.status_code) == (202, 202), second.text
    assert [event["kind"] for event in first.json()["events"] + second.json()["events"]] == ["alert.escalate"] * 2
    assert first.json()["events"][0]["id"] != second.json()["events"][0]["id"]
    for body in (to_user, to_team):
        again = dedup_post(web, "opsgenie", body)
        assert again.status_code == 200, again.text
        assert again.json()["events"][0]["duplicate"] is True
    assert len(web.api("/api/events?source=opsgenie").json()["events"]) == 2


def test_grafana_alerts_without_labels_fingerprint_or_start_are_two_events_titled_by_their_groups(stack):
    web = stack.service(**dedup_secrets())
    bodies = [fixture_bytes("intake", f"grafana-bare-{number}.json") for number in (1, 2)]

    answers = [dedup_post(web, "grafana", body) for body in bodies]

    assert [answer.status_code for answer in answers] == [202, 202], answers[1].text
    ids = [answer.json()["events"][0]["id"] for answer in answers]
    titles = [web.api(f"/api/events/{event_id}").json()["title"] for event_id in ids]
    assert titles == ["[FIRING:1] Disk full db-3 (OPS-42)", "[FIRING:1] Checkout latency (OPS-77)"]
    for body, event_id in zip(bodies, ids, strict=True):
        again = dedup_post(web, "grafana", body)
        assert again.status_code == 200, again.text
        assert again.json()["events"][0] == {
            "id": event_id,
            "kind": "alert.firing",
            "duplicate": True,
            "links_planned": 0,
        }
    assert len(web.api("/api/events?source=grafana").json()["events"]) == 2


def test_a_signed_pagerduty_body_sent_again_under_other_delivery_ids_is_one_event(stack):
    web = stack.service(**dedup_secrets())
    body = fixture_bytes("pagerduty", "incident-triggered.json")

    first = dedup_post(web, "pagerduty", body, {"X-Webhook-Id": "delivery-1"})
    replays = [dedup_post(web, "pagerduty", body, {"X-Webhook-Id": f"forged-{n}"}) for n in range(3)]
    bare = dedup_post(web, "pagerduty", body)

    assert first.status_code == 202, first.text
    for answer in [*replays, bare]:
        assert answer.status_code == 200, answer.text
        assert answer.json()["events"][0]["id"] == first.json()["events"][0]["id"]
    assert len(web.api("/api/events?source=pagerduty").json()["events"]) == 1


def test_every_sender_stores_a_key_repeated_with_other_content_as_a_new_event_counted_logged_and_linked_once(
    stack, fake_datadog, tmp_path
):
    fake_datadog.add_case("OPS-1")
    fake_datadog.add_case("OPS-42")
    rules = tmp_path / "dedup-rules.yaml"
    rules.write_text(
        "version: 1\nrules:\n"
        "  - name: a-mentioned-case-relates-to-ops-1\n"
        "    link:\n"
        "      relationship: RELATES_TO\n"
        "      parent: {type: CASE, find: {in: [title], pattern: '\\bOPS-\\d+\\b'}}\n"
        "      child: {type: CASE, id: OPS-1}\n"
    )
    web = stack.service(RULES_FILE=str(rules), **dedup_secrets())

    for source in SOURCES:
        first_body, first_ids = notification(source, f"{source}-1", "Disk full on db-3, see OPS-42")
        other_body, other_ids = notification(source, f"{source}-1", "Disk full on db-3 and db-4, see OPS-42")

        first = dedup_post(web, source, first_body, first_ids)
        other = dedup_post(web, source, other_body, other_ids)

        assert first.status_code == 202, f"{source}: {first.text}"
        assert other.status_code == 202, f"{source}: {other.text}"
        [stored], [conflict] = first.json()["events"], other.json()["events"]
        assert (conflict["duplicate"], conflict["dedup_conflict"]) == (False, True), source
        assert "dedup_conflict" not in stored
        assert conflict["links_planned"] == 1  # evaluated like any new event
        record = web.api(f"/api/events/{conflict['id']}").json()
        assert record["dedup_conflict"] is True
        assert record["same_key_events"] == [stored["id"]]
        assert "with different content: stored and evaluated as a new event" in record["dedup"]
        assert record["title"] == "Disk full on db-3 and db-4, see OPS-42"
        for body, ids, event_id in ((first_body, first_ids, stored["id"]), (other_body, other_ids, conflict["id"])):
            again = dedup_post(web, source, body, ids)
            assert again.status_code == 200, f"{source} retried: {again.text}"
            assert again.json()["events"][0]["id"] == event_id

    wait_for(lambda: dedup_conflicts_counted(web) == dict.fromkeys(SOURCES, 1.0), message="one conflict per sender")
    lines = [json.loads(line) for line in web.logs().splitlines() if line.startswith("{")]
    flagged = [line for line in lines if line.get("msg") == "webhook" and line.get("dedup_conflict")]
    assert sorted(line["source"] for line in flagged) == sorted(SOURCES)
    assert len(web.api("/api/events?limit=100").json()["events"]) == 2 * len(SOURCES)
    # Every event planned OPS-42 RELATES_TO OPS-1: one link, created once.
    wait_for(lambda: web.api("/api/links?state=delivered").json()["links"], message="the link delivered")
    assert len(web.api("/api/links").json()["links"]) == 1
    assert fake_datadog.link_counts() == {("CASE", case_uuid("OPS-42"), "RELATES_TO", "CASE", case_uuid("OPS-1")): 1}
