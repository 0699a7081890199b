"""Opsgenie (and Jira Service Management Operations) alert webhooks: one alert action per POST.

Opsgenie does not sign webhooks. Its Webhook integration sends custom headers,
so it presents OPSGENIE_WEBHOOK_SECRET as a Bearer token, a basic-auth password
or an X-Webhook-Token header. The kind is `alert.<action>` in canonical form
(alert.create, alert.acknowledge, alert.close, alert.addnote, …; a custom
action's name with its spaces and dashes as underscores). Alert tags like
`case:OPS-42` become tags `{case: [OPS-42]}`, next to the alert's details and
its team.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from caselink import auth
from caselink.auth import AuthPolicy
from caselink.bodies import json_body
from caselink.events import Event
from caselink.events import SenderKinds
from caselink.events import WebhookRequest
from caselink.events import canonical_kind
from caselink.events import parse_tags
from caselink.events import text
from caselink.normalise import body_digest
from caselink.normalise import first_text
from caselink.normalise import iso_from_epoch
from caselink.normalise import label_tags
from caselink.normalise import mapping
from caselink.normalise import merge_tags
from caselink.normalise import unrecognised

SOURCE = "opsgenie"
# `alert.` + Opsgenie's documented actions; a custom action is `alert.<its name>`.
KINDS = SenderKinds(
    documented=(
        "alert.create",
        "alert.acknowledge",
        "alert.unacknowledge",
        "alert.close",
        "alert.delete",
        "alert.escalate",
        "alert.addnote",
        "alert.addtags",
        "alert.removetags",
        "alert.addteam",
        "alert.addrecipient",
        "alert.assignownership",
        "alert.takeownership",
    ),
    possible=("alert.*",),
)
# Where an action leaves the alert, for payloads that carry no status of their own.
_STATUS_AFTER = {
    "create": "open",
    "acknowledge": "acknowledged",
    "unacknowledge": "open",
    "close": "closed",
    "delete": "deleted",
}


def authenticate(request: WebhookRequest, policy: AuthPolicy) -> None:
    auth.check_token(request, policy)


def parse(request: WebhookRequest) -> Any:
    return json_body(request)


def normalise(payload: Any, request: WebhookRequest) -> list[Event]:
    alert = mapping(payload).get("alert")
    if not isinstance(alert, Mapping):
        return [unrecognised(SOURCE, payload, request, "the body has no alert object; is this an alert webhook?")]
    action = re.sub(r"\s+", "_", text(mapping(payload).get("action")).strip().lower())
    if not canonical_kind(action):
        return [unrecognised(SOURCE, payload, request, "action is missing or names no action")]
    team = first_text(alert.get("team"))
    return [
        Event(
            source=SOURCE,
            kind=f"alert.{action}",
            dedup_key=_dedup_key(mapping(payload), alert, action) or body_digest(request.body),
            # Opsgenie's message is the alert's one-line title; the description is the long text.
            title=first_text(alert.get("message")),
            message=first_text(alert.get("description")),
            severity=first_text(mapping(alert.get("details")).get("severity")),
            priority=first_text(alert.get("priority")),
            status=first_text(alert.get("status")) or _STATUS_AFTER.get(action, ""),
            tags=merge_tags(
                parse_tags(alert.get("tags")), label_tags(alert.get("details")), {"team": [team]} if team else {}
            ),
            occurred_at=iso_from_epoch(alert.get("updatedAt")) or iso_from_epoch(alert.get("createdAt")),
            payload=payload,
        )
    ]


def _dedup_key(payload: Mapping[str, Any], alert: Mapping[str, Any], action: str) -> str:
    """Alert id + action + update time, and for an escalation whom it notified and which repeat.

    An Escalate delivery may carry nothing of the alert but its id, and one
    escalation notifies a user, then a team: without `escalationNotify` and
    `repeatCount` every step of it would share one key.
    """
    alert_id = first_text(alert.get("alertId"))
    if not alert_id:
        return ""
    parts = [alert_id, action, first_text(alert.get("updatedAt"), alert.get("createdAt"))]
    notified = first_text(mapping(payload.get("escalationNotify")).get("id"))
    if notified or payload.get("escalationId") is not None:
        parts += [first_text(payload.get("escalationId")), notified, first_text(payload.get("repeatCount"))]
    return ":".join(parts)
