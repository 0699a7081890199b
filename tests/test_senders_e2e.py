"""Every sender end to end: signed fixtures through gunicorn to exactly one link each at a fake Datadog.

Forged and unsigned deliveries are refused with 401 and leave nothing in the
store; bodies over MAX_BODY_BYTES are refused with 413, declared or chunked.
"""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.conftest import FIXTURES
from tests.conftest import fixture_bytes
from tests.fake_datadog import case_uuid
from tests.handlers.conftest import basic_auth
from tests.handlers.conftest import grafana_signature
from tests.handlers.conftest import pagerduty_signature
from tests.handlers.conftest import standard_headers
from tests.servers import wait_for

pytestmark = pytest.mark.slow

SECRETS = {
    "pagerduty": "pd-e2e-secret",
    "opsgenie": "og-e2e-token",
    "alertmanager": "am-e2e-token",
    "grafana": "gf-e2e-secret",
    "generic": "whsec_ZTJlLXN0YW5kYXJkLXdlYmhvb2tzLXNlY3JldA==",
}
SENDERS = tuple(SECRETS)
ENV = {f"{source.upper()}_WEBHOOK_SECRET": secret for source, secret in SECRETS.items()}
INCIDENT = "3b1f0c2e-9a7d-4e55-8c21-6f0e2d9a1b44"
CASE_KEY = r"\b[A-Z][A-Z0-9]{1,9}-\d+\b"

# Senders other than `generic` name no Datadog entity, so each rule links the
# case the payload mentions to a standing case of its own (PD-1, OG-1, …); the
# fake Datadog creates each link once, so every fixture must add exactly one.
RULES = f"""
version: 1
rules:
  - name: pagerduty-incident-mentions-case
    on: {{source: pagerduty, kind: incident.triggered}}
    when:
      - {{field: severity, equals: high}}
      - {{field: tags.service, equals: payments-api}}
    link:
      relationship: RELATES_TO
      parent: {{type: CASE, find: {{in: [title], pattern: '{CASE_KEY}'}}}}
      child: {{type: CASE, id: PD-1}}
  - name: opsgenie-alert-tagged-with-case
    on: {{source: opsgenie, kind: alert.create}}
    when:
      - {{field: priority, in: [P1, P2]}}
    link:
      relationship: RELATES_TO
      parent: {{type: CASE, find: {{in: [tags.case], pattern: '{CASE_KEY}'}}}}
      child: {{type: CASE, id: OG-1}}
  - name: alertmanager-alert-labelled-with-case
    on: {{source: alertmanager, kind: alert.firing}}
    when:
      - {{field: severity, equals: critical}}
    link:
      relationship: RELATES_TO
      parent: {{type: CASE, find: {{in: [tags.case], pattern: '{CASE_KEY}'}}}}
      child: {{type: CASE, id: AM-1}}
  - name: grafana-alert-labelled-with-case
    on: {{source: grafana, kind: alert.firing}}
    when:
      - {{field: tags.grafana_folder, equals: payments}}
    link:
      relationship: RELATES_TO
      parent: {{type: CASE, find: {{in: [tags.case], pattern: '{CASE_KEY}'}}}}
      child: {{type: CASE, id: GF-1}}
  - name: generic-incident-causes-mentioned-case
    on: {{source: generic, kind: incident.*}}
    link:
      relationship: CAUSES
      parent: event
      child: {{type: CASE, find: {{in: [title, message], pattern: '{CASE_KEY}'}}}}
"""

# (sender, fixture) -> the kinds of the events it yields, and the one link it leads to.
EXPECTED = {
    ("pagerduty", "incident-triggered.json"): (
        ["incident.triggered"],
        ("CASE", case_uuid("OPS-42"), "RELATES_TO", "CASE", case_uuid("PD-1")),
    ),
    ("opsgenie", "alert-create.json"): (
        ["alert.create"],
        ("CASE", case_uuid("OPS-42"), "RELATES_TO", "CASE", case_uuid("OG-1")),
    ),
    ("alertmanager", "firing-group.json"): (
        ["alert.firing", "alert.firing"],
        ("CASE", case_uuid("OPS-42"), "RELATES_TO", "CASE", case_uuid("AM-1")),
    ),
    ("grafana", "firing.json"): (
        ["alert.firing"],
        ("CASE", case_uuid("OPS-42"), "RELATES_TO", "CASE", case_uuid("GF-1")),
    ),
    ("generic", "standard-webhook.json"): (
        ["incident.created"],
        ("INCIDENT", INCIDENT, "CAUSES", "CASE", case_uuid("OPS-42")),
    ),
}


def link_key(link: dict) -> tuple[str, str, str, str, str]:
    a = link["attributes"]
    return (
        a["parent_entity_type"],
        a["parent_entity_id"],
        a["relationship"],
        a["child_entity_type"],
        a["child_entity_id"],
    )


def signed(source: str, body: bytes, *, delivery: str = "delivery-1") -> dict:
    """Keyword arguments for Service.post that authenticate `body` the way `source` does."""
    secret = SECRETS[source]
    if source == "pagerduty":
        headers = {"X-PagerDuty-Signature": pagerduty_signature(body, secret), "X-Webhook-Id": delivery}
        return {"headers": headers, "token": None}
    if source == "opsgenie":
        return {"token": secret}
    if source == "alertmanager":
        return {"headers": {"Authorization": basic_auth(secret, user="alertmanager")}, "token": None}
    if source == "grafana":
        stamp = str(int(time.time()))
        headers = {
            "X-Grafana-Alerting-Signature": grafana_signature(body, secret, stamp),
            "X-Grafana-Alerting-Timestamp": stamp,
        }
        return {"headers": headers, "token": None}
    return {"headers": standard_headers(f"msg_{delivery}", time.time(), body, secret), "token": None}


def forgeries(source: str, body: bytes) -> dict[str, dict]:
    """Ways a stranger might try `source`, as keyword arguments for Service.post (plus the body)."""
    secret = SECRETS[source]
    tampered = body.replace(b"OPS-42", b"OPS-50")
    assert tampered != body
    stale = int(time.time()) - 3600
    attempts: dict[str, dict] = {"unsigned": {"token": None}}
    if source == "pagerduty":
        attempts["signed with another secret"] = {
            "headers": {"X-PagerDuty-Signature": pagerduty_signature(body, "guess")},
            "token": None,
        }
        attempts["the secret as a token"] = {"token": secret}
    elif source == "opsgenie":
        attempts["wrong token"] = {"token": "og-guess"}
    elif source == "alertmanager":
        attempts["wrong password"] = {"headers": {"Authorization": basic_auth("guess")}, "token": None}
    elif source == "grafana":
        attempts["signed with another secret"] = {
            "headers": {"X-Grafana-Alerting-Signature": grafana_signature(body, "guess")},
            "token": None,
        }
        attempts["replayed an hour later"] = {
            "headers": {
                "X-Grafana-Alerting-Signature": grafana_signature(body, secret, str(stale)),
                "X-Grafana-Alerting-Timestamp": str(stale),
            },
            "token": None,
        }
    else:
        attempts["signed with another secret"] = {
            "headers": standard_headers("msg_x", time.time(), body, "whsec_Z3Vlc3NlZC1zZWNyZXQ="),
            "token": None,
        }
        attempts["replayed an hour later"] = {"headers": standard_headers("msg_x", stale, body, secret), "token": None}
    if source in ("pagerduty", "grafana", "generic"):
        attempts["tampered body"] = {"body": tampered, **signed(source, body)}
    return attempts


def sender_fixtures() -> list[tuple[str, str]]:
    return sorted((source, path.name) for source in SENDERS for path in (FIXTURES / source).glob("*.json"))


def test_every_sender_fixture_has_an_expected_outcome():
    assert sender_fixtures() == sorted(EXPECTED)


def test_every_fixture_becomes_its_events_and_exactly_one_link(stack, fake_datadog, tmp_path):
    for key in ("PD-1", "OG-1", "AM-1", "GF-1"):
        fake_datadog.add_case(key)
    rules = tmp_path / "senders.yaml"
    rules.write_text(RULES)
    web = stack.service(RULES_FILE=str(rules), **ENV)
    created: list[tuple[str, ...]] = []

    for source, name in sender_fixtures():
        kinds, link = EXPECTED[(source, name)]
        body = fixture_bytes(source, name)

        answer = web.post(source, body, **signed(source, body))

        assert answer.status_code == 202, f"{source}/{name}: {answer.text}"
        assert [event["kind"] for event in answer.json()["events"]] == kinds
        assert answer.json()["links_planned"] == 1, f"{source}/{name}: {answer.text}"
        created.append(link)
        wait_for(lambda: len(fake_datadog.links) == len(created), message=f"the link for {source}/{name}")
        assert link_key(fake_datadog.links[-1]) == link

        again = web.post(source, body, **signed(source, body))
        assert again.status_code == 200, f"{source}/{name} repeated: {again.text}"
        assert all(event["duplicate"] for event in again.json()["events"])

    wait_for(
        lambda: len(web.api("/api/links?state=delivered").json()["links"]) == len(created),
        message="every link delivered",
    )
    assert [link_key(link) for link in fake_datadog.links] == created
    assert all(count == 1 for count in fake_datadog.link_counts().values())


def test_forged_and_unsigned_requests_are_refused_and_leave_no_trace(stack, fake_datadog):
    web = stack.service(**ENV)
    refused = []

    for source, name in sender_fixtures():
        body = fixture_bytes(source, name)
        for attempt, post in forgeries(source, body).items():
            answer = web.post(source, post.pop("body", body), **post)
            assert answer.status_code == 401, f"{source} {attempt}: {answer.status_code} {answer.text}"
            assert answer.json()["error"]["code"] == "unauthenticated"
            refused.append(answer.text)

    assert web.api("/api/events").json()["events"] == []
    assert fake_datadog.creations() == []
    shown = "\n".join(refused) + web.logs()
    for secret in SECRETS.values():
        assert secret not in shown
        assert secret.removeprefix("whsec_") not in shown


def test_a_sender_without_a_secret_is_refused_in_live_mode(stack):
    web = stack.service(**{name: value for name, value in ENV.items() if not name.startswith("PAGERDUTY")})
    body = fixture_bytes("pagerduty", "incident-triggered.json")

    answer = web.post("pagerduty", body, **signed("pagerduty", body))

    assert answer.status_code == 401
    assert "PAGERDUTY_WEBHOOK_SECRET" in answer.json()["error"]["message"]
    assert web.api("/api/events").json()["events"] == []


def pagerduty_body_of(size: int, event_id: str | None = None) -> bytes:
    """The PagerDuty fixture grown to `size` bytes, as a verbose incident would be."""
    payload = json.loads(fixture_bytes("pagerduty", "incident-triggered.json"))
    if event_id is not None:
        payload["event"]["id"] = event_id
    payload["event"]["data"]["description"] = ""
    padding = size - len(json.dumps(payload).encode())
    payload["event"]["data"]["description"] = "x" * padding
    body = json.dumps(payload).encode()
    assert len(body) == size
    return body


def test_a_256_kb_pagerduty_payload_is_accepted_with_the_default_limit(stack):
    web = stack.service(**ENV)
    body = pagerduty_body_of(256 * 1024)
    # Another event: PagerDuty's dedup key is the signed event.id, not the delivery header.
    other = pagerduty_body_of(256 * 1024, event_id="01DEDUPCHUNKED0000000000000")
    chunked_headers = {"Content-Type": "application/json", **signed("pagerduty", other, delivery="d-2")["headers"]}
    chunks = (other[start : start + 8192] for start in range(0, len(other), 8192))

    declared = web.post("pagerduty", body, **signed("pagerduty", body, delivery="d-1"))
    chunked = web.http.post(f"{web.url}/webhooks/pagerduty", data=chunks, headers=chunked_headers, timeout=10)

    for answer in (declared, chunked):
        assert answer.status_code == 202, answer.text
        assert [event["kind"] for event in answer.json()["events"]] == ["incident.triggered"]
    assert chunked.request.headers.get("Transfer-Encoding") == "chunked"
    [stored, _] = web.api("/api/events").json()["events"]
    assert len(web.api(f"/api/events/{stored['id']}").json()["payload"]["event"]["data"]["description"]) > 250_000


def test_a_body_over_the_limit_is_refused_with_413(stack):
    web = stack.service(MAX_BODY_BYTES="65536", **ENV)
    body = pagerduty_body_of(200 * 1024)
    headers = {"Content-Type": "application/json", **signed("pagerduty", body)["headers"]}

    # Its own connection: gunicorn drops a keep-alive connection whose body it did not read.
    answer = requests.post(f"{web.url}/webhooks/pagerduty", data=body, headers=headers, timeout=10)

    assert answer.status_code == 413
    assert answer.json()["error"] == {
        "code": "payload_too_large",
        "message": "the body is larger than MAX_BODY_BYTES (65536 bytes)",
    }
    assert web.api("/api/events").json()["events"] == []


def test_a_chunked_body_over_the_limit_is_refused_with_413(stack):
    web = stack.service(MAX_BODY_BYTES="65536", **ENV)
    body = pagerduty_body_of(200 * 1024)
    headers = {"Content-Type": "application/json", **signed("pagerduty", body)["headers"]}
    chunks = (body[start : start + 8192] for start in range(0, len(body), 8192))

    answer = requests.post(f"{web.url}/webhooks/pagerduty", data=chunks, headers=headers, timeout=10)

    assert answer.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in answer.request.headers
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "payload_too_large"
    assert web.api("/api/events").json()["events"] == []
