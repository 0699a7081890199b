"""Alertmanager webhooks: a shared token, one event per alert, firing and resolved per alert."""

from __future__ import annotations

import json

import pytest

from caselink.errors import AuthenticationError
from caselink.events import Event
from handlers import alertmanager
from tests.conftest import fixture_bytes
from tests.conftest import fixture_json
from tests.handlers.conftest import ODD_PAYLOADS
from tests.handlers.conftest import basic_auth
from tests.handlers.conftest import events
from tests.handlers.conftest import policy
from tests.handlers.conftest import webhook
from tests.handlers.conftest import without_payload

SECRET = "am-token"
BODY = fixture_bytes("alertmanager", "firing-group.json")


def group(*alerts: dict, status: str = "firing") -> bytes:
    payload = fixture_json("alertmanager", "firing-group.json")
    payload["status"] = status
    payload["alerts"] = list(alerts)
    return json.dumps(payload).encode()


def alert(instance: str, status: str | None, **changes: object) -> dict:
    """One alert of a group; its fingerprint is the instance name unless changed."""
    base = {
        "status": status,
        "labels": {"alertname": "DiskFull", "severity": "warning", "instance": instance},
        "annotations": {"summary": f"Disk full on {instance}"},
        "startsAt": "2026-11-26T09:00:00Z",
        "endsAt": "2026-11-26T09:30:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": instance,
    }
    base.update(changes)
    return base


# -- authenticate -------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": f"Bearer {SECRET}"}, {"Authorization": basic_auth(SECRET, user="alertmanager")}],
    ids=["authorization", "basic_auth"],
)
def test_the_token_from_http_config_is_accepted(headers):
    alertmanager.authenticate(webhook("alertmanager", BODY, headers), policy("alertmanager", SECRET))


@pytest.mark.parametrize(
    ("headers", "reason"),
    [({}, "missing_credentials"), ({"Authorization": "Bearer wrong"}, "bad_credentials")],
)
def test_a_missing_or_wrong_token_is_refused(headers, reason):
    with pytest.raises(AuthenticationError) as refused:
        alertmanager.authenticate(webhook("alertmanager", BODY, headers), policy("alertmanager", SECRET))

    assert refused.value.detail["reason"] == reason


def test_without_a_secret_every_request_is_refused_in_live_mode():
    with pytest.raises(AuthenticationError, match="ALERTMANAGER_WEBHOOK_SECRET"):
        alertmanager.authenticate(webhook("alertmanager", BODY), policy("alertmanager"))


def test_without_a_secret_requests_are_let_in_only_in_dry_run():
    alertmanager.authenticate(webhook("alertmanager", BODY), policy("alertmanager", open_without_secret=True))


# -- normalise ----------------------------------------------------------------------


def test_the_fixture_group_becomes_one_event_per_alert():
    first, second = events(alertmanager, webhook("alertmanager", BODY))

    assert without_payload(first) == {
        "source": "alertmanager",
        "kind": "alert.firing",
        "entity": None,
        "title": "Pod payments/api-7d9f is crash looping",
        "message": "Restarted 5 times in 10 minutes.",
        "severity": "critical",
        "priority": "",
        "status": "firing",
        "url": "http://prometheus.example.com:9090/graph?g0.expr=...",
        "tags": {
            "alertname": ["KubePodCrashLooping"],
            "severity": ["critical"],
            "namespace": ["payments"],
            "pod": ["api-7d9f"],
            "case": ["OPS-42"],
        },
        "occurred_at": "2026-11-26T09:10:00Z",
    }
    assert first.dedup_key == "c8f2a1e0b7d34f61:firing:2026-11-26T09:10:00Z"
    assert (second.kind, second.title, second.dedup_key) == (
        "alert.firing",
        "Pod payments/api-8c1e is crash looping",
        "0a9d4e57c21b8f30:firing:2026-11-26T09:11:00Z",
    )
    assert "case" not in second.tags


def test_each_event_carries_the_group_with_only_its_own_alert():
    whole = json.loads(BODY)
    first, second = events(alertmanager, webhook("alertmanager", BODY))

    assert first.payload["alerts"] == [whole["alerts"][0]]
    assert second.payload["alerts"] == [whole["alerts"][1]]
    assert first.payload["commonLabels"] == whole["commonLabels"]
    assert first.payload["groupKey"] == whole["groupKey"]


def test_a_mixed_group_yields_firing_and_resolved_events_by_each_alert_status():
    body = group(alert("aaa", "firing"), alert("bbb", "resolved"), alert("ccc", "firing"))

    produced = events(alertmanager, webhook("alertmanager", body))

    assert [(event.kind, event.status, event.tags["instance"]) for event in produced] == [
        ("alert.firing", "firing", ["aaa"]),
        ("alert.resolved", "resolved", ["bbb"]),
        ("alert.firing", "firing", ["ccc"]),
    ]


def test_a_resolved_alert_happened_when_it_ended_and_a_firing_one_when_it_started():
    firing, resolved = events(
        alertmanager, webhook("alertmanager", group(alert("a", "firing"), alert("b", "resolved")))
    )

    assert firing.occurred_at == "2026-11-26T09:00:00Z"
    assert resolved.occurred_at == "2026-11-26T09:30:00Z"


def test_firing_and_resolved_of_one_alert_are_separate_deliveries_and_a_resend_is_not():
    [firing] = events(alertmanager, webhook("alertmanager", group(alert("a", "firing"))))
    again, _ = events(alertmanager, webhook("alertmanager", group(alert("a", "firing"), alert("b", "firing"))))
    [resolved] = events(alertmanager, webhook("alertmanager", group(alert("a", "resolved"), status="resolved")))

    assert firing.dedup_key == again.dedup_key
    assert firing.dedup_key != resolved.dedup_key


def test_a_new_firing_of_the_same_alert_is_a_new_delivery():
    [before] = events(alertmanager, webhook("alertmanager", group(alert("a", "firing"))))
    [later] = events(
        alertmanager, webhook("alertmanager", group(alert("a", "firing", startsAt="2026-11-27T00:00:00Z")))
    )

    assert before.dedup_key != later.dedup_key


def test_without_a_fingerprint_the_label_set_identifies_the_alert():
    one = alert("x", "firing", fingerprint=None)
    same_labels_other_order = {**one, "labels": dict(reversed(list(one["labels"].items())))}

    [first] = events(alertmanager, webhook("alertmanager", group(one)))
    [second] = events(alertmanager, webhook("alertmanager", group(same_labels_other_order)))
    [other] = events(alertmanager, webhook("alertmanager", group(alert("y", "firing", fingerprint=None))))

    assert first.dedup_key == second.dedup_key != other.dedup_key


def test_the_alert_name_is_the_title_when_there_is_no_summary():
    [event] = events(alertmanager, webhook("alertmanager", group(alert("a", "firing", annotations={}))))

    assert (event.title, event.message) == ("DiskFull", "")


def test_an_alert_without_status_takes_the_group_status():
    [event] = events(alertmanager, webhook("alertmanager", group(alert("a", None), status="resolved")))

    assert event.kind == "alert.resolved"


def test_an_empty_group_yields_no_event():
    assert events(alertmanager, webhook("alertmanager", group())) == []


def test_an_unreadable_alert_is_kept_as_unrecognised_next_to_the_readable_ones():
    body = group(alert("a", "firing"), "not an alert", alert("b", None), status="")

    first, broken, statusless = events(alertmanager, webhook("alertmanager", body))

    assert first.kind == "alert.firing"
    assert (broken.kind, broken.problem) == ("unrecognised", "alerts[1] is not an object")
    assert (statusless.kind, statusless.problem) == ("unrecognised", "alerts[2].status is missing")
    assert broken.dedup_key != statusless.dedup_key


def test_a_body_without_alerts_is_kept_as_unrecognised():
    [event] = events(alertmanager, webhook("alertmanager", b'{"version": "4", "status": "firing"}'))

    assert event.kind == "unrecognised"
    assert "no alerts list" in event.problem


@pytest.mark.parametrize("body", ODD_PAYLOADS)
def test_odd_json_never_raises(body):
    for event in events(alertmanager, webhook("alertmanager", body)):
        assert event.source == "alertmanager"
        assert event.dedup_key


@pytest.mark.parametrize(("status", "kind"), [("FIRING", "alert.firing"), ("Resolved", "alert.resolved")])
def test_the_status_in_canonical_form_is_the_kind(status, kind):
    [event] = events(alertmanager, webhook("alertmanager", group(alert("db-1", status))))

    assert event.kind == kind


def test_a_status_with_no_letter_or_digit_is_kept_as_unrecognised():
    [event] = events(alertmanager, webhook("alertmanager", group(alert("db-1", "--"), status="--")))

    assert (event.kind, event.problem) == ("unrecognised", "alerts[0].status is missing")


def test_two_alertmanagers_of_an_ha_pair_send_the_same_content_and_a_changed_annotation_is_other_content():
    def sent(receiver: str, external_url: str, summary: str) -> Event:
        payload = json.loads(group(alert("db-3", "firing", annotations={"summary": summary})))
        payload.update(receiver=receiver, externalURL=external_url, groupKey=f"{{}}/{receiver}:{{}}")
        [event] = events(alertmanager, webhook("alertmanager", json.dumps(payload)))
        return event

    peer_one = sent("caselink", "http://alertmanager-0:9093", "Disk full on db-3")
    peer_two = sent("caselink-ha", "http://alertmanager-1:9093", "Disk full on db-3")
    annotated = sent("caselink", "http://alertmanager-0:9093", "Disk full on db-3, see OPS-42")

    assert peer_one.dedup_key == peer_two.dedup_key == annotated.dedup_key
    assert peer_one.digest == peer_two.digest
    assert annotated.digest != peer_one.digest
    assert len(peer_one.digest) == 64


def test_an_alert_that_names_itself_nowhere_is_titled_by_the_group_title_grafana_sends():
    titles = [
        events(alertmanager, webhook("alertmanager", fixture_bytes("intake", f"grafana-bare-{number}.json")))[0].title
        for number in (1, 2)
    ]

    assert titles == ["[FIRING:1] Disk full db-3 (OPS-42)", "[FIRING:1] Checkout latency (OPS-77)"]
