"""Opsgenie alert webhooks: a shared token, `alert.<action>` kinds, tags from `key:value` alert tags."""

from __future__ import annotations

import json

import pytest

from caselink.errors import AuthenticationError
from handlers import opsgenie
from tests.conftest import fixture_bytes
from tests.handlers.conftest import ODD_PAYLOADS
from tests.handlers.conftest import basic_auth
from tests.handlers.conftest import events
from tests.handlers.conftest import policy
from tests.handlers.conftest import webhook
from tests.handlers.conftest import without_payload

SECRET = "og-token"
BODY = fixture_bytes("opsgenie", "alert-create.json")


def with_action(action: str, **alert: object) -> bytes:
    payload = json.loads(BODY)
    payload["action"] = action
    payload["alert"].update(alert)
    return json.dumps(payload).encode()


# -- authenticate -------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {SECRET}"},
        {"Authorization": basic_auth(SECRET)},
        {"X-Webhook-Token": SECRET},
    ],
    ids=["bearer", "basic", "header"],
)
def test_the_shared_token_is_accepted_in_each_place(headers):
    opsgenie.authenticate(webhook("opsgenie", BODY, headers), policy("opsgenie", SECRET))


def test_either_token_is_accepted_while_rotating():
    rotating = policy("opsgenie", "old-token", SECRET)

    opsgenie.authenticate(webhook("opsgenie", BODY, {"X-Webhook-Token": "old-token"}), rotating)
    opsgenie.authenticate(webhook("opsgenie", BODY, {"X-Webhook-Token": SECRET}), rotating)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing_credentials"),
        ({"Authorization": "Bearer og-token-guess"}, "bad_credentials"),
        ({"Authorization": basic_auth("nope")}, "bad_credentials"),
    ],
)
def test_a_missing_or_wrong_token_is_refused(headers, reason):
    with pytest.raises(AuthenticationError) as refused:
        opsgenie.authenticate(webhook("opsgenie", BODY, headers), policy("opsgenie", SECRET))

    assert refused.value.detail["reason"] == reason
    assert SECRET not in json.dumps(refused.value.to_dict())


def test_without_a_secret_every_request_is_refused_in_live_mode():
    with pytest.raises(AuthenticationError, match="OPSGENIE_WEBHOOK_SECRET"):
        opsgenie.authenticate(webhook("opsgenie", BODY, {"X-Webhook-Token": SECRET}), policy("opsgenie"))


def test_without_a_secret_requests_are_let_in_only_in_dry_run():
    opsgenie.authenticate(webhook("opsgenie", BODY), policy("opsgenie", open_without_secret=True))


# -- normalise ----------------------------------------------------------------------


def test_the_fixture_becomes_one_alert_create_event():
    [event] = events(opsgenie, webhook("opsgenie", BODY))

    assert without_payload(event) == {
        "source": "opsgenie",
        "kind": "alert.create",
        "entity": None,
        "title": "Disk full on db-7, case OPS-42",
        "message": "Disk usage 98% on /var/lib/postgresql",
        "severity": "",
        "priority": "P2",
        "status": "open",
        "url": "",
        "tags": {
            "prod": [""],
            "db": [""],
            "case": ["OPS-42"],
            "service": ["payments-api"],
            "team": ["checkout"],
        },
        "occurred_at": "2025-11-26T10:00:00.000Z",
    }
    assert event.dedup_key == "70413a06-38d6-4c85-92b8-5ebc900d42e2-1764151200000:create:1764151200000000000"
    assert event.payload == json.loads(BODY)


@pytest.mark.parametrize(
    ("action", "kind", "status"),
    [
        ("Acknowledge", "alert.acknowledge", "acknowledged"),
        ("UnAcknowledge", "alert.unacknowledge", "open"),
        ("Close", "alert.close", "closed"),
        ("Escalate", "alert.escalate", ""),
        ("AddNote", "alert.addnote", ""),
        ("Page the DBA", "alert.page_the_dba", ""),
        ("Page Payments On-Call", "alert.page_payments_on_call", ""),
        ("  Update  Priority ", "alert.update_priority", ""),
        ("UpdatePriority", "alert.updatepriority", ""),
        ("Run runbook: restart", "alert.run_runbook_restart", ""),
    ],
)
def test_the_action_in_canonical_form_is_the_kind(action, kind, status):
    [event] = events(opsgenie, webhook("opsgenie", with_action(action)))

    assert (event.kind, event.status) == (kind, status)


def test_a_status_in_the_payload_wins_over_the_one_implied_by_the_action():
    [event] = events(opsgenie, webhook("opsgenie", with_action("AddNote", status="closed")))

    assert event.status == "closed"


def test_each_action_on_an_alert_is_its_own_delivery():
    keys = {
        events(opsgenie, webhook("opsgenie", with_action(action, updatedAt=updated)))[0].dedup_key
        for action, updated in [("Create", 1), ("Acknowledge", 2), ("AddNote", 3), ("AddNote", 4), ("AddNote", 4)]
    }

    assert len(keys) == 4


def test_the_update_time_in_nanoseconds_is_when_it_happened():
    [event] = events(opsgenie, webhook("opsgenie", with_action("Close", updatedAt=1764154800123000000)))

    assert event.occurred_at == "2025-11-26T11:00:00.123Z"


def test_a_severity_detail_becomes_the_severity():
    [event] = events(opsgenie, webhook("opsgenie", with_action("Create", details={"severity": "critical"})))

    assert event.severity == "critical"


def test_without_an_alert_id_identical_bodies_share_a_dedup_key():
    body = with_action("Create", alertId=None)

    assert events(opsgenie, webhook("opsgenie", body))[0].dedup_key.startswith("sha256:")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"action": "Create"}', "no alert object"),
        (b'{"action": "", "alert": {"alertId": "a"}}', "action is missing"),
        (b'"Create"', "no alert object"),
    ],
)
def test_a_payload_it_cannot_read_is_kept_as_unrecognised(body, problem):
    [event] = events(opsgenie, webhook("opsgenie", body))

    assert event.kind == "unrecognised"
    assert problem in event.problem


@pytest.mark.parametrize("body", ODD_PAYLOADS)
def test_odd_json_never_raises(body):
    for event in events(opsgenie, webhook("opsgenie", body)):
        assert event.source == "opsgenie"
        assert event.dedup_key


@pytest.mark.parametrize("action", ["", "  ", "???", " - "])
def test_an_action_with_no_letter_or_digit_is_kept_as_unrecognised(action):
    [event] = events(opsgenie, webhook("opsgenie", with_action(action)))

    assert (event.kind, event.problem) == ("unrecognised", "action is missing or names no action")


def test_each_step_of_an_escalation_that_carries_only_the_alert_id_has_its_own_dedup_key():
    first, second = (fixture_bytes("intake", f"og-escalate-{number}.json") for number in (1, 2))

    [to_user] = events(opsgenie, webhook("opsgenie", first))
    [to_team] = events(opsgenie, webhook("opsgenie", second))
    [again] = events(opsgenie, webhook("opsgenie", first))

    assert (to_user.kind, to_team.kind) == ("alert.escalate", "alert.escalate")
    assert to_user.dedup_key != to_team.dedup_key
    assert again.dedup_key == to_user.dedup_key
    assert to_user.dedup_key.startswith("7ba97e3a-0000-4000-8000-000000000001:escalate:")
