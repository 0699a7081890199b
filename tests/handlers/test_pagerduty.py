"""PagerDuty Webhooks v3: signatures over the raw body, event types as kinds, X-Webhook-Id dedup."""

from __future__ import annotations

import json

import pytest

from caselink.errors import AuthenticationError
from caselink.errors import BadRequestError
from caselink.errors import UnsupportedMediaTypeError
from handlers import pagerduty
from tests.conftest import fixture_bytes
from tests.handlers.conftest import ODD_PAYLOADS
from tests.handlers.conftest import events
from tests.handlers.conftest import pagerduty_signature
from tests.handlers.conftest import policy
from tests.handlers.conftest import webhook
from tests.handlers.conftest import without_payload

SECRET = "pd-secret-one"
NEXT_SECRET = "pd-secret-two"
BODY = fixture_bytes("pagerduty", "incident-triggered.json")


def signed(body=BODY, *secrets, headers=None):
    signature = pagerduty_signature(body, *(secrets or (SECRET,)))
    return webhook("pagerduty", body, {"X-PagerDuty-Signature": signature, **(headers or {})})


def body_of(event_type: str, data: dict, **event: object) -> bytes:
    return json.dumps({"event": {"id": "evt-1", "event_type": event_type, "data": data, **event}}).encode()


# -- authenticate -------------------------------------------------------------------


def test_a_signature_over_the_raw_body_is_accepted():
    pagerduty.authenticate(signed(), policy("pagerduty", SECRET))


def test_any_of_several_signatures_may_match_during_rotation():
    header = pagerduty_signature(BODY, "retired-secret", SECRET)

    pagerduty.authenticate(webhook("pagerduty", BODY, {"X-PagerDuty-Signature": header}), policy("pagerduty", SECRET))


def test_any_of_several_configured_secrets_may_match():
    pagerduty.authenticate(signed(BODY, NEXT_SECRET), policy("pagerduty", SECRET, NEXT_SECRET))


def test_spaces_after_commas_and_other_versions_are_tolerated():
    header = "v0=abcd, " + pagerduty_signature(BODY, SECRET)

    pagerduty.authenticate(webhook("pagerduty", BODY, {"X-PagerDuty-Signature": header}), policy("pagerduty", SECRET))


def test_a_tampered_body_is_refused():
    request = webhook("pagerduty", BODY.replace(b"OPS-42", b"OPS-43"), dict(signed().headers))

    with pytest.raises(AuthenticationError) as refused:
        pagerduty.authenticate(request, policy("pagerduty", SECRET))

    assert refused.value.detail["reason"] == "bad_signature"
    assert refused.value.status_code == 401


def test_a_signature_made_with_another_secret_is_refused():
    with pytest.raises(AuthenticationError) as refused:
        pagerduty.authenticate(signed(BODY, "someone-elses-secret"), policy("pagerduty", SECRET))

    assert refused.value.detail["reason"] == "bad_signature"


def test_a_signature_over_reserialised_json_is_refused():
    reserialised = json.dumps(json.loads(BODY)).encode()
    request = webhook("pagerduty", BODY, {"X-PagerDuty-Signature": pagerduty_signature(reserialised, SECRET)})

    with pytest.raises(AuthenticationError):
        pagerduty.authenticate(request, policy("pagerduty", SECRET))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-PagerDuty-Signature": ""},
        {"X-PagerDuty-Signature": "v1=not-hex"},
        {"X-PagerDuty-Signature": "sha256=" + pagerduty_signature(BODY, SECRET)[3:]},
        {"Authorization": f"Bearer {SECRET}"},
    ],
    ids=["no-header", "empty", "bad-hex", "other-prefix", "token-instead"],
)
def test_a_request_without_a_usable_signature_is_refused(headers):
    with pytest.raises(AuthenticationError) as refused:
        pagerduty.authenticate(webhook("pagerduty", BODY, headers), policy("pagerduty", SECRET))

    assert refused.value.detail["reason"] == "missing_signature"


def test_no_answer_names_the_secret():
    with pytest.raises(AuthenticationError) as refused:
        pagerduty.authenticate(signed(BODY, "wrong"), policy("pagerduty", SECRET))

    assert SECRET not in json.dumps(refused.value.to_dict())


def test_without_a_secret_every_request_is_refused_in_live_mode():
    with pytest.raises(AuthenticationError) as refused:
        pagerduty.authenticate(signed(), policy("pagerduty"))

    assert refused.value.detail["reason"] == "no_secret_configured"
    assert "PAGERDUTY_WEBHOOK_SECRET" in refused.value.message


def test_without_a_secret_requests_are_let_in_only_in_dry_run():
    pagerduty.authenticate(webhook("pagerduty", BODY), policy("pagerduty", open_without_secret=True))


# -- parse --------------------------------------------------------------------------


def test_a_body_that_is_not_json_is_a_bad_request():
    with pytest.raises(BadRequestError, match="not valid JSON"):
        pagerduty.parse(webhook("pagerduty", b"{not json"))


def test_a_form_body_is_an_unsupported_media_type():
    with pytest.raises(UnsupportedMediaTypeError, match="application/json"):
        pagerduty.parse(webhook("pagerduty", b"a=b", content_type="application/x-www-form-urlencoded"))


# -- normalise ----------------------------------------------------------------------


def test_the_fixture_becomes_one_incident_triggered_event():
    [event] = events(pagerduty, signed(headers={"X-Webhook-Id": "delivery-1"}))

    assert without_payload(event) == {
        "source": "pagerduty",
        "kind": "incident.triggered",
        "entity": None,
        "title": "Payments DB replica lag, see OPS-42",
        "message": "",
        "severity": "high",
        "priority": "P1",
        "status": "triggered",
        "url": "https://acme.pagerduty.com/incidents/PGR0VU2",
        "tags": {"service": ["payments-api"], "team": ["checkout"], "priority": ["P1"]},
        "occurred_at": "2026-11-26T09:14:22.169Z",
    }
    assert event.payload == json.loads(BODY)
    assert event.problem is None


def test_the_signed_event_id_is_the_dedup_key_whatever_the_unsigned_delivery_header_says():
    keys = {
        event.dedup_key
        for delivery in (None, "delivery-1", "delivery-2", "")
        for event in events(pagerduty, webhook("pagerduty", BODY, {"X-Webhook-Id": delivery} if delivery else {}))
    }

    assert keys == {"5ac64822-4adc-4fda-ade0-410becf0de4f"}


def test_without_any_id_identical_bodies_share_a_dedup_key():
    body = json.dumps({"event": {"event_type": "incident.resolved", "data": {}}}).encode()

    [first] = events(pagerduty, webhook("pagerduty", body))
    [second] = events(pagerduty, webhook("pagerduty", body))

    assert first.dedup_key == second.dedup_key
    assert first.dedup_key.startswith("sha256:")


def test_the_ping_is_understood_and_yields_no_event():
    body = body_of("pagey.ping", {"message": "Hello from your friend Pagey!", "type": "ping"}, resource_type="pagey")
    request = signed(body)

    pagerduty.authenticate(request, policy("pagerduty", SECRET))
    assert events(pagerduty, request) == []


def test_an_event_type_caselink_does_not_know_is_kept_as_the_kind():
    body = body_of("incident.teleported", {"id": "PX", "type": "incident", "title": "Moved", "urgency": "low"})

    [event] = events(pagerduty, webhook("pagerduty", body))

    assert (event.kind, event.title, event.severity, event.problem) == ("incident.teleported", "Moved", "low", None)


def test_a_note_reads_its_incident_reference_and_content():
    data = {
        "type": "incident_note",
        "id": "P2LA89X",
        "content": "Rolled back, see OPS-42",
        "incident": {
            "id": "PGR0VU2",
            "type": "incident_reference",
            "summary": "A little bump in the road",
            "html_url": "https://acme.pagerduty.com/incidents/PGR0VU2",
        },
    }

    [event] = events(pagerduty, webhook("pagerduty", body_of("incident.annotated", data)))

    assert event.kind == "incident.annotated"
    assert event.title == "A little bump in the road"
    assert event.message == "Rolled back, see OPS-42"
    assert event.url == "https://acme.pagerduty.com/incidents/PGR0VU2"


def test_a_full_incident_names_its_escalation_policy_and_type_as_tags():
    data = {
        "type": "incident",
        "status": "acknowledged",
        "priority": None,
        "service": {"summary": "API Service"},
        "teams": [{"summary": "Engineering"}, {"summary": "SRE"}, {"summary": "SRE"}],
        "escalation_policy": {"summary": "Default"},
        "incident_type": {"name": "major"},
    }

    [event] = events(pagerduty, webhook("pagerduty", body_of("incident.acknowledged", data, agent=None)))

    assert event.tags == {
        "service": ["API Service"],
        "team": ["Engineering", "SRE"],
        "escalation_policy": ["Default"],
        "incident_type": ["major"],
    }
    assert (event.status, event.priority) == ("acknowledged", "")


def test_a_service_event_tags_the_service_by_name():
    data = {"id": "PF9KMXH", "type": "service", "name": "payments-api", "description": "Takes money"}

    [event] = events(pagerduty, webhook("pagerduty", body_of("service.updated", data)))

    assert (event.title, event.message, event.tags) == ("payments-api", "Takes money", {"service": ["payments-api"]})


def ref(type_: str, summary: str | None, id_: str = "PX") -> dict:
    """A PagerDuty reference as webhooks carry them: `{id, type: <object>_reference, summary, …}`."""
    return {
        "id": id_,
        "type": f"{type_}_reference",
        "summary": summary,
        "html_url": f"https://acme.pagerduty.com/{id_}",
    }


INCIDENT_REF = ref("incident", "A little bump in the road", "PGR0VU2")

# Every `event.data` type of PagerDuty's v3 docs (developer-docs 01-Overview.md,
# "Event Data Types"), with the tags each must give. References sit on the
# incident, beside it, in a list, or are the data itself.
SHAPES = {
    "incident (incident.triggered, .acknowledged, .delegated, .priority_updated, …)": (
        "incident.priority_updated",
        {
            "id": "PGR0VU2",
            "type": "incident",
            "title": "A little bump in the road",
            "incident_type": {"name": "major"},
            "service": ref("service", "API Service"),
            "assignees": [ref("user", "User 123")],
            "escalation_policy": ref("escalation_policy", "Default"),
            "teams": [ref("team", "Engineering")],
            "priority": ref("priority", "P1"),
            "urgency": "high",
            "conference_bridge": {"conference_number": "+1 1234123412,,987654321#"},
            "resolve_reason": None,
        },
        {
            "service": ["API Service"],
            "team": ["Engineering"],
            "escalation_policy": ["Default"],
            "priority": ["P1"],
            "incident_type": ["major"],
        },
    ),
    "incident_note (incident.annotated)": (
        "incident.annotated",
        {"incident": INCIDENT_REF, "id": "P2LA89X", "content": "Glad", "trimmed": False, "type": "incident_note"},
        {},
    ),
    "incident_note whose incident reference names its service and policy": (
        "incident.annotated",
        {
            "incident": {**INCIDENT_REF, "service": ref("service", "APIs"), "priority": ref("priority", "P2")},
            "escalation_policy": ref("escalation_policy", "APIs-ep"),
            "content": "Rolled back",
            "type": "incident_note",
        },
        {"service": ["APIs"], "escalation_policy": ["APIs-ep"], "priority": ["P2"]},
    ),
    "incident_status_update (incident.status_update_published)": (
        "incident.status_update_published",
        {
            "incident": INCIDENT_REF,
            "id": "P2LA89X",
            "message": "A fix is being developed",
            "type": "incident_status_update",
            "service": ref("service", "Checkout"),
            "escalation_policy": ref("escalation_policy", "Checkout-ep"),
        },
        {"service": ["Checkout"], "escalation_policy": ["Checkout-ep"]},
    ),
    "incident_responder (incident.responder.added, .replied)": (
        "incident.responder.added",
        {
            "incident": INCIDENT_REF,
            "user": ref("user", "Maeve"),
            "escalation_policy": ref("escalation_policy", "The Policy"),
            "message": "Please help",
            "state": "pending",
            "type": "incident_responder",
        },
        {"escalation_policy": ["The Policy"]},
    ),
    "incident_workflow_instance (incident.workflow.started, .completed)": (
        "incident.workflow.completed",
        {
            "id": "P3SNKQS",
            "type": "incident_workflow_instance",
            "summary": "A Workflow Instance Name",
            "incident_workflow": ref("incident_workflow", "A Workflow Name"),
            "workflow_trigger": ref("workflow_trigger", "Trigger Name"),
            "incident": INCIDENT_REF,
            "service": ref("service", "A service"),
        },
        {"service": ["A service"]},
    ),
    "incident_role_assignment (incident.role.assigned)": (
        "incident.role.assigned",
        {
            "type": "incident_role_assignment",
            "incident_role_assignments": [
                {"assignee": ref("user", "User 1"), "incident": ref("incident", None), "role": ref("role", "Lead")}
            ],
        },
        {},
    ),
    "incident_field_values (incident.custom_field_values.updated)": (
        "incident.custom_field_values.updated",
        {
            "incident": INCIDENT_REF,
            "custom_fields": [{"name": "service", "type": "field_value", "value": "production"}],
            "type": "incident_field_values",
        },
        {},
    ),
    "incident_task (incident.task.created)": (
        "incident.task.created",
        {"name": "Do it", "type": "incident_task", "assignees": [ref("user", "U")], "incident": INCIDENT_REF},
        {},
    ),
    "service (service.created, .updated, .deleted)": (
        "service.updated",
        {
            "id": "PF9KMXH",
            "type": "service",
            "summary": "testing service updates",
            "teams": [ref("team", "Engineering"), ref("team", "SRE")],
            "escalation_policy": ref("escalation_policy", "Default"),
        },
        {"service": ["testing service updates"], "team": ["Engineering", "SRE"], "escalation_policy": ["Default"]},
    ),
}


@pytest.mark.parametrize(("kind", "data", "tags"), list(SHAPES.values()), ids=list(SHAPES))
def test_every_event_shape_tags_the_names_its_data_refers_to(kind, data, tags):
    [event] = events(pagerduty, webhook("pagerduty", body_of(kind, data)))

    assert (event.kind, event.tags) == (kind, tags)


def test_the_priority_beside_the_incident_is_the_events_priority():
    data = {"incident": INCIDENT_REF, "priority": ref("priority", "P2"), "type": "incident_note"}

    [event] = events(pagerduty, webhook("pagerduty", body_of("incident.annotated", data)))

    assert event.priority == "P2"


def test_a_name_is_tagged_once_and_the_incidents_own_comes_first():
    data = {
        "type": "incident",
        "service": ref("service", "payments-api"),
        "escalation_policy": {**ref("escalation_policy", "Default"), "services": [ref("service", "ledger")]},
        "assignments": [{"service": ref("service", "payments-api")}],
    }

    [event] = events(pagerduty, webhook("pagerduty", body_of("incident.triggered", data)))

    assert event.tags["service"] == ["payments-api", "ledger"]


@pytest.mark.parametrize("event_type", ["Incident.Triggered", "incident.Triggered ", "INCIDENT.TRIGGERED"])
def test_an_event_type_in_another_case_is_the_canonical_kind(event_type):
    [event] = events(pagerduty, webhook("pagerduty", body_of(event_type, {"type": "incident"})))

    assert event.kind == "incident.triggered"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"event": {"event_type": "...", "data": {}}}', "names no kind"),
        (b'{"messages": []}', "no event object"),
        (b"[1, 2]", "no event object"),
        (b'{"event": {"data": {}}}', "event_type is missing"),
    ],
)
def test_a_payload_it_cannot_read_is_kept_as_unrecognised(body, problem):
    [event] = events(pagerduty, webhook("pagerduty", body))

    assert event.kind == "unrecognised"
    assert problem in event.problem
    assert event.payload == json.loads(body)


@pytest.mark.parametrize("body", ODD_PAYLOADS)
def test_odd_json_never_raises(body):
    for event in events(pagerduty, webhook("pagerduty", body)):
        assert event.source == "pagerduty"
        assert event.dedup_key


@pytest.mark.parametrize(
    ("data", "tags"),
    [
        ({"type": "incident", "priority": "P2"}, {"priority": ["P2"]}),
        ({"type": "incident", "service": "Checkout"}, {"service": ["Checkout"]}),
        (
            {"type": "incident", "escalation_policy": " Payments ", "teams": ["SRE", ""]},
            {"team": ["SRE"], "escalation_policy": ["Payments"]},
        ),
        ({"incident": {"type": "incident_reference", "incident_type": "major"}}, {"incident_type": ["major"]}),
    ],
)
def test_a_reference_written_as_a_plain_name_is_a_tag(data, tags):
    [event] = events(pagerduty, webhook("pagerduty", body_of("incident.triggered", data)))

    assert event.tags == tags
    assert event.priority == tags.get("priority", [""])[0]
