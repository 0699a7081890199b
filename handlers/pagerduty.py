"""PagerDuty Webhooks v3: one incident or service event per POST.

PagerDuty signs the raw body with every active secret of the subscription and
sends `X-PagerDuty-Signature: v1=<hex>[,v1=<hex>…]`; one of them matching one
secret of PAGERDUTY_WEBHOOK_SECRET (comma-separated while rotating) is enough.
The kind is `event.event_type` as PagerDuty names it (incident.triggered, …),
new types included. The `pagey.ping` test event is answered 200 and not stored.
The dedup key is the signed body's `event.id`, never the unsigned X-Webhook-Id
header: anyone who captured one signed delivery could vary that header to have
it stored again as new events.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from caselink import auth
from caselink.auth import AuthPolicy
from caselink.bodies import json_body
from caselink.events import Event
from caselink.events import WebhookRequest
from caselink.events import text
from caselink.normalise import body_digest
from caselink.normalise import first_text
from caselink.normalise import mapping
from caselink.normalise import unrecognised

SOURCE = "pagerduty"
SIGNATURE_HEADER = "X-PagerDuty-Signature"
PING = "pagey.ping"


def authenticate(request: WebhookRequest, policy: AuthPolicy) -> None:
    secrets = policy.required_secrets()
    if not secrets:
        return
    expected = [auth.hmac_sha256(secret.reveal().encode("utf-8"), request.body) for secret in secrets]
    presented = _signatures(request.headers.get(SIGNATURE_HEADER, ""))
    auth.require_signature(expected, presented, SIGNATURE_HEADER)


def _signatures(header: str) -> list[bytes]:
    """The v1 signatures of `v1=<hex>,v1=<hex>`; other versions and bad hex are left out."""
    found = []
    for part in header.split(","):
        version, _, value = part.strip().partition("=")
        if version != "v1":
            continue
        try:
            found.append(bytes.fromhex(value.strip()))
        except ValueError:
            continue
    return found


def parse(request: WebhookRequest) -> Any:
    return json_body(request)


def normalise(payload: Any, request: WebhookRequest) -> list[Event]:
    event = mapping(payload).get("event")
    if not isinstance(event, Mapping):
        return [unrecognised(SOURCE, payload, request, "the body has no event object; is this a v3 webhook?")]
    kind = text(event.get("event_type")).strip()
    if not kind:
        return [unrecognised(SOURCE, payload, request, "event.event_type is missing")]
    if kind == PING:
        return []
    data = mapping(event.get("data"))
    incident = _incident(data)
    return [
        Event(
            source=SOURCE,
            kind=kind,
            dedup_key=first_text(event.get("id")) or body_digest(request.body),
            title=first_text(incident.get("title"), incident.get("summary"), data.get("summary"), data.get("name")),
            # A note's content, a status update's message, a service's description.
            message=first_text(data.get("content"), data.get("message"), data.get("description")),
            severity=first_text(incident.get("urgency")),
            priority=first_text(mapping(incident.get("priority")).get("summary")),
            status=first_text(incident.get("status"), data.get("status")),
            url=first_text(data.get("html_url"), incident.get("html_url")),
            tags=_tags(data, incident),
            occurred_at=first_text(event.get("occurred_at")) or None,
            payload=payload,
        )
    ]


def _incident(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The incident an event is about: the data itself, or the reference a note or task carries."""
    if data.get("type") == "incident":
        return data
    return mapping(data.get("incident"))


def _tags(data: Mapping[str, Any], incident: Mapping[str, Any]) -> dict[str, list[str]]:
    """service, team, escalation_policy and incident_type, by name, as a rule author writes them."""
    service = incident.get("service") if incident else None
    if service is None and data.get("type") == "service":
        service = data
    found: dict[str, list[str]] = {}
    for name, refs in (
        ("service", [service]),
        ("team", incident.get("teams") or data.get("teams")),
        ("escalation_policy", [incident.get("escalation_policy")]),
        ("incident_type", [incident.get("incident_type")]),
    ):
        values: list[str] = []
        for ref in refs if isinstance(refs, list) else []:
            value = _name(ref)
            if value and value not in values:
                values.append(value)
        if values:
            found[name] = values
    return found


def _name(ref: Any) -> str:
    reference = mapping(ref)
    return first_text(reference.get("summary"), reference.get("name"))
