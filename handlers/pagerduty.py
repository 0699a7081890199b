"""PagerDuty Webhooks v3: one incident or service event per POST.

PagerDuty signs the raw body with every active secret of the subscription and
sends `X-PagerDuty-Signature: v1=<hex>[,v1=<hex>…]`; one of them matching one
secret of PAGERDUTY_WEBHOOK_SECRET (comma-separated while rotating) is enough.
The kind is `event.event_type` (incident.triggered, …, new types included),
in canonical form. Tags are the names of the services, escalation policies,
teams, priorities and incident types the event's data refers to, wherever
they sit: on the incident, beside it (a responder request's escalation
policy, a workflow's service) or as the data itself (service.updated).
The `pagey.ping` test event is answered 200 and not stored.
The dedup key is the signed body's `event.id`, never the unsigned X-Webhook-Id
header: anyone who captured one signed delivery could vary that header to have
it stored again as new events.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from caselink import auth
from caselink.auth import AuthPolicy
from caselink.bodies import json_body
from caselink.events import Event
from caselink.events import SenderKinds
from caselink.events import WebhookRequest
from caselink.events import canonical_kind
from caselink.events import text
from caselink.normalise import body_digest
from caselink.normalise import first_text
from caselink.normalise import mapping
from caselink.normalise import unrecognised

SOURCE = "pagerduty"
# PagerDuty's documented event types (its webhooks v3 docs); types it adds later
# pass through, and every type so far is about an incident or a service.
KINDS = SenderKinds(
    documented=(
        "incident.triggered",
        "incident.acknowledged",
        "incident.unacknowledged",
        "incident.escalated",
        "incident.delegated",
        "incident.reassigned",
        "incident.reopened",
        "incident.resolved",
        "incident.priority_updated",
        "incident.service_updated",
        "incident.incident_type.changed",
        "incident.annotated",
        "incident.responder.added",
        "incident.responder.replied",
        "incident.status_update_published",
        "incident.conference_bridge.updated",
        "incident.custom_field_values.updated",
        "incident.role.assigned",
        "incident.task.created",
        "incident.task.updated",
        "incident.task.completed",
        "incident.action_invocation.created",
        "incident.action_invocation.updated",
        "incident.action_invocation.terminated",
        "incident.workflow.started",
        "incident.workflow.completed",
        "service.created",
        "service.updated",
        "service.deleted",
        "service.custom_field_values.updated",
    ),
    possible=("incident.*", "service.*"),
)
SIGNATURE_HEADER = "X-PagerDuty-Signature"
PING = "pagey.ping"
# The tag an object stands for: by its `type` (PagerDuty objects and their
# references), else by the key it sits under (payloads written by hand, incident_type).
_TAG_OF_TYPE = {
    "service": "service",
    "service_reference": "service",
    "escalation_policy": "escalation_policy",
    "escalation_policy_reference": "escalation_policy",
    "team": "team",
    "team_reference": "team",
    "priority": "priority",
    "priority_reference": "priority",
    "incident_type": "incident_type",
    "incident_type_reference": "incident_type",
}
_TAG_OF_KEY = {
    "service": "service",
    "escalation_policy": "escalation_policy",
    "team": "team",
    "teams": "team",
    "priority": "priority",
    "incident_type": "incident_type",
}
TAGS = ("service", "team", "escalation_policy", "priority", "incident_type")
# References sit at most a few objects deep; a deeper payload is not PagerDuty's.
_MAX_DEPTH = 8


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
    if not canonical_kind(kind):
        return [unrecognised(SOURCE, payload, request, "event.event_type is missing or names no kind")]
    if canonical_kind(kind) == PING:
        return []
    data = mapping(event.get("data"))
    incident = _incident(data)
    tags = _tags(data)
    return [
        Event(
            source=SOURCE,
            kind=kind,
            dedup_key=first_text(event.get("id")) or body_digest(request.body),
            title=first_text(incident.get("title"), incident.get("summary"), data.get("summary"), data.get("name")),
            # A note's content, a status update's message, a service's description.
            message=first_text(data.get("content"), data.get("message"), data.get("description")),
            severity=first_text(incident.get("urgency")),
            priority=first_text(mapping(incident.get("priority")).get("summary"), *tags.get("priority", ())),
            status=first_text(incident.get("status"), data.get("status")),
            url=first_text(data.get("html_url"), incident.get("html_url")),
            tags=tags,
            occurred_at=first_text(event.get("occurred_at")) or None,
            payload=payload,
        )
    ]


def _incident(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The incident an event is about: the data itself, or the reference a note or task carries."""
    if data.get("type") == "incident":
        return data
    return mapping(data.get("incident"))


def _tags(data: Mapping[str, Any]) -> dict[str, list[str]]:
    """service, team, escalation_policy, priority and incident_type names, wherever they sit in `data`.

    Each name once, nearest to `data` first: the incident's own service comes
    before one a nested object mentions.
    """
    found: dict[str, list[str]] = {}
    pending: deque[tuple[Any, str | None, int]] = deque([(data, None, 0)])
    while pending:
        value, key, depth = pending.popleft()
        if depth > _MAX_DEPTH:
            continue
        if isinstance(value, list):
            # A list's elements are what its key names (`teams`), one level down.
            pending.extend((item, key, depth + 1) for item in value)
            continue
        if isinstance(value, str):
            # A reference written as its plain name (`"priority": "P2"`), as hand-written payloads do.
            tag, name = _TAG_OF_KEY.get(key or ""), value.strip()
            if tag and name and name not in found.setdefault(tag, []):
                found[tag].append(name)
            continue
        if not isinstance(value, Mapping):
            continue
        kind = value.get("type")
        tag = _TAG_OF_TYPE.get(kind) if isinstance(kind, str) else None
        tag = tag or _TAG_OF_KEY.get(key or "")
        name = _name(value) if tag else ""
        if tag and name and name not in found.setdefault(tag, []):
            found[tag].append(name)
        pending.extend((item, str(child), depth + 1) for child, item in value.items())
    return {tag: found[tag] for tag in TAGS if found.get(tag)}


def _name(ref: Any) -> str:
    reference = mapping(ref)
    return first_text(reference.get("summary"), reference.get("name"))
