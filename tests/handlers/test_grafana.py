"""Grafana webhook contact points: HMAC with an optional signed timestamp, or a shared token."""

from __future__ import annotations

import json

import pytest

from caselink.errors import AuthenticationError
from handlers import grafana
from tests.conftest import fixture_bytes
from tests.handlers.conftest import NOW
from tests.handlers.conftest import ODD_PAYLOADS
from tests.handlers.conftest import events
from tests.handlers.conftest import grafana_signature
from tests.handlers.conftest import policy
from tests.handlers.conftest import webhook
from tests.handlers.conftest import without_payload

SECRET = "gf-hmac-secret"
BODY = fixture_bytes("grafana", "firing.json")
SIGNATURE = "X-Grafana-Alerting-Signature"
TIMESTAMP = "X-Grafana-Alerting-Timestamp"


def signed(body=BODY, secret=SECRET, timestamp=None, headers=None):
    all_headers = {SIGNATURE: grafana_signature(body, secret, timestamp)}
    if timestamp is not None:
        all_headers[TIMESTAMP] = timestamp
    all_headers.update(headers or {})
    return webhook("grafana", body, all_headers)


def refusal(request, checked=None):
    with pytest.raises(AuthenticationError) as refused:
        grafana.authenticate(request, checked or policy("grafana", SECRET))
    assert SECRET not in json.dumps(refused.value.to_dict())
    return refused.value.detail["reason"]


# -- authenticate: HMAC -------------------------------------------------------------


def test_a_signature_over_the_body_is_accepted():
    grafana.authenticate(signed(), policy("grafana", SECRET))


def test_a_signature_over_timestamp_and_body_is_accepted():
    grafana.authenticate(signed(timestamp=str(int(NOW) - 20)), policy("grafana", SECRET))


def test_a_timestamp_at_the_edge_of_the_tolerance_is_accepted():
    edge = policy("grafana", SECRET, tolerance=300)

    grafana.authenticate(signed(timestamp=str(int(NOW) - 300)), edge)
    grafana.authenticate(signed(timestamp=str(int(NOW) + 300)), edge)


@pytest.mark.parametrize("offset", [-301, +301, -86_400])
def test_a_replayed_or_future_timestamp_is_refused(offset):
    assert refusal(signed(timestamp=str(int(NOW) + offset))) == "stale_timestamp"


@pytest.mark.parametrize("stamp", ["", "soon", "1764151200.5", "-1764151200", "١٧٦٤١٥١٢٠٠"])
def test_a_timestamp_that_is_not_unix_seconds_is_refused(stamp):
    assert refusal(signed(timestamp=stamp)) == "bad_timestamp"


def test_a_signed_timestamp_cannot_be_swapped_for_a_fresh_one():
    request = signed(timestamp=str(int(NOW) - 3600))
    replayed = webhook("grafana", BODY, {SIGNATURE: request.headers[SIGNATURE], TIMESTAMP: str(int(NOW))})

    assert refusal(replayed) == "bad_signature"


def test_dropping_the_timestamp_header_breaks_the_signature():
    request = signed(timestamp=str(int(NOW)))

    assert refusal(webhook("grafana", BODY, {SIGNATURE: request.headers[SIGNATURE]})) == "bad_signature"


def test_a_tampered_body_is_refused():
    request = signed()

    assert refusal(webhook("grafana", BODY.replace(b"OPS-42", b"OPS-1"), dict(request.headers))) == "bad_signature"


def test_a_signature_made_with_another_secret_is_refused():
    assert refusal(signed(secret="not-the-secret")) == "bad_signature"


@pytest.mark.parametrize("value", ["", "zz-not-hex", "sha256=" + grafana_signature(BODY, SECRET)])
def test_an_unreadable_signature_is_refused(value):
    assert refusal(webhook("grafana", BODY, {SIGNATURE: value})) == "missing_signature"


def test_either_configured_secret_may_have_signed_while_rotating():
    rotating = policy("grafana", "old-secret", SECRET)

    grafana.authenticate(signed(secret="old-secret"), rotating)
    grafana.authenticate(signed(secret=SECRET, timestamp=str(int(NOW))), rotating)


def test_the_header_names_come_from_the_policy():
    custom = policy("grafana", SECRET, grafana_signature_header="X-Sig", grafana_timestamp_header="X-Sig-Time")
    stamp = str(int(NOW))
    request = webhook("grafana", BODY, {"X-Sig": grafana_signature(BODY, SECRET, stamp), "X-Sig-Time": stamp})

    grafana.authenticate(request, custom)
    # Under the default names the same request carries no signature and no token.
    assert refusal(request) == "missing_credentials"


def test_without_a_secret_a_signed_request_is_refused_in_live_mode():
    assert refusal(signed(), policy("grafana")) == "no_secret_configured"


def test_without_a_secret_requests_are_let_in_only_in_dry_run():
    grafana.authenticate(signed(secret="anything"), policy("grafana", open_without_secret=True))
    grafana.authenticate(webhook("grafana", BODY), policy("grafana", open_without_secret=True))


# -- authenticate: shared token ------------------------------------------------------


def test_without_a_signature_header_the_secret_is_a_shared_token():
    grafana.authenticate(webhook("grafana", BODY, {"Authorization": f"Bearer {SECRET}"}), policy("grafana", SECRET))


@pytest.mark.parametrize(
    ("headers", "reason"),
    [({}, "missing_credentials"), ({"Authorization": "Bearer guess"}, "bad_credentials")],
)
def test_without_a_signature_a_missing_or_wrong_token_is_refused(headers, reason):
    assert refusal(webhook("grafana", BODY, headers)) == reason


def test_a_good_token_does_not_excuse_a_bad_signature():
    request = signed(secret="forged", headers={"Authorization": f"Bearer {SECRET}"})

    assert refusal(request) == "bad_signature"


# -- normalise ----------------------------------------------------------------------


def test_the_fixture_becomes_one_alert_firing_event():
    [event] = events(grafana, webhook("grafana", BODY))

    assert without_payload(event) == {
        "source": "grafana",
        "kind": "alert.firing",
        "entity": None,
        "title": "p99 latency over 2s",
        "message": "payments-api p99 at 2.4s",
        "severity": "warning",
        "priority": "",
        "status": "firing",
        "url": "https://grafana.example.com/alerting/grafana/abc123/view",
        "tags": {
            "alertname": ["HighLatency"],
            "grafana_folder": ["payments"],
            "severity": ["warning"],
            "case": ["OPS-42"],
        },
        "occurred_at": "2026-11-26T09:12:00Z",
    }
    assert event.dedup_key == "57c6d9296de2ad39:firing:2026-11-26T09:12:00Z"
    assert event.payload["title"] == "[FIRING:1] HighLatency (payments warning)"
    assert event.payload["alerts"] == json.loads(BODY)["alerts"]


def test_a_resolved_notification_yields_alert_resolved():
    payload = json.loads(BODY)
    payload.update(status="resolved", state="ok")
    payload["alerts"][0].update(status="resolved", endsAt="2026-11-26T09:20:00Z")

    [event] = events(grafana, webhook("grafana", json.dumps(payload)))

    assert (event.kind, event.occurred_at) == ("alert.resolved", "2026-11-26T09:20:00Z")
    assert event.dedup_key == "57c6d9296de2ad39:resolved:2026-11-26T09:12:00Z"


@pytest.mark.parametrize("body", ODD_PAYLOADS)
def test_odd_json_never_raises(body):
    for event in events(grafana, webhook("grafana", body)):
        assert event.source == "grafana"
        assert event.dedup_key


@pytest.mark.parametrize(("status", "kind"), [("Firing", "alert.firing"), ("RESOLVED", "alert.resolved")])
def test_the_alert_status_in_canonical_form_is_the_kind(status, kind):
    payload = json.loads(BODY)
    payload["alerts"][0]["status"] = status

    [event] = events(grafana, webhook("grafana", json.dumps(payload)))

    assert event.kind == kind
