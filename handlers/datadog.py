"""Datadog webhooks: incident, case, On-Call page and monitor alert notifications.

Datadog does not sign webhooks, so the sender presents DATADOG_WEBHOOK_SECRET
as a Bearer token, a basic-auth password or an X-Webhook-Token header. The
body is the JSON template from docs/senders.md, or Datadog's default payload; with
"encode as form" its top-level keys arrive as form fields.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from caselink import auth
from caselink.auth import AuthPolicy
from caselink.bodies import form_body
from caselink.bodies import json_body
from caselink.events import EntityRef
from caselink.events import Event
from caselink.events import SenderKinds
from caselink.events import WebhookRequest
from caselink.events import canonical_kind
from caselink.events import is_uuid
from caselink.events import parse_tags
from caselink.events import text
from caselink.normalise import body_digest
from caselink.normalise import iso_from_epoch
from caselink.normalise import unrecognised

SOURCE = "datadog"
# The kinds of the templates in docs/senders.md and of bodies without `event`; a template of
# your own may send any `event`, and Datadog's default payload its `$EVENT_TYPE`.
KINDS = SenderKinds(
    documented=(
        "incident.created",
        "incident.updated",
        "case.created",
        "page.escalated",
        "alert.triggered",
        "alert.re_triggered",
        "alert.recovered",
        "alert.warn",
        "alert.no_data",
        "alert.renotify",
        "incident.notification",
        "case.notification",
        "page.notification",
        "alert.notification",
        "notification",
    ),
    possible=("*",),
)
# The object in the payload, the entity type it stands for, and the kind used when `event` is absent.
_OBJECTS = (
    ("incident", "INCIDENT"),
    ("case", "CASE"),
    ("page", "PAGE"),
    ("alert", None),
)
# A template variable Datadog left unfilled (`$ALERT_TRANSITION`, `$ID`): the field says nothing.
_UNFILLED = re.compile(r"\$[A-Z][A-Z0-9_]*")


def authenticate(request: WebhookRequest, policy: AuthPolicy) -> None:
    auth.check_token(request, policy)


def parse(request: WebhookRequest) -> Any:
    if request.mimetype == "application/x-www-form-urlencoded":
        return form_body(request)
    return json_body(request)


def normalise(payload: Any, request: WebhookRequest) -> list[Event]:
    if not isinstance(payload, Mapping):
        return [unrecognised(SOURCE, payload, request, "the body is JSON but not an object")]
    name, entity_type, obj = _main_object(payload)
    kind = _kind_field(payload.get("event")) or _kind_without_event(name, obj, payload)
    entity = _entity(entity_type, obj)
    fields = _text_fields(name, obj, payload)
    return [
        Event(
            source=SOURCE,
            kind=kind,
            dedup_key=_dedup_key(kind, payload, request.body),
            entity=entity,
            tags=parse_tags(payload.get("tags")),
            occurred_at=_occurred_at(payload.get("date")),
            payload=payload,
            **fields,
        )
    ]


def _main_object(payload: Mapping[str, Any]) -> tuple[str | None, str | None, Mapping[str, Any]]:
    for name, entity_type in _OBJECTS:
        obj = payload.get(name)
        if isinstance(obj, Mapping):
            return name, entity_type, obj
    return None, None, {}


def _filled(value: Any) -> str:
    """The field's text, or empty when Datadog left a template variable in it unfilled."""
    raw = text(value).strip()
    return "" if raw.startswith("$") or _UNFILLED.search(raw) else raw


def _kind_field(value: Any) -> str:
    """The canonical kind a field names, or empty when it names none: missing, an unfilled
    variable, or a last segment without a letter or digit (`alert.` from an empty
    `$ALERT_TRANSITION`), so the caller falls back as if the field were missing."""
    raw = _filled(value)
    return canonical_kind(raw) if canonical_kind(raw.rpartition(".")[2]) else ""


def _kind_without_event(name: str | None, obj: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
    transition = _kind_field(obj.get("transition")) if name == "alert" else ""
    if transition:
        return "alert." + transition
    if name is not None:
        return f"{name}.notification"
    # Datadog's default payload names the event type in event_type.
    return _kind_field(payload.get("event_type")) or "notification"


def _entity(entity_type: str | None, obj: Mapping[str, Any]) -> EntityRef | None:
    if entity_type is None:
        return None
    ident = text(obj.get("id")).strip()
    if is_uuid(ident):
        return EntityRef(entity_type, ident.lower())
    if entity_type == "CASE":
        # Case notifications may carry only the key; the worker resolves it.
        for candidate in (ident, text(obj.get("key")).strip()):
            try:
                return EntityRef.checked("CASE", candidate)
            except ValueError:
                continue
    return None


def _text_fields(name: str | None, obj: Mapping[str, Any], payload: Mapping[str, Any]) -> dict[str, str]:
    if name is None:
        return {
            "title": text(payload.get("title")),
            "message": text(payload.get("body") or payload.get("message")),
            "priority": text(payload.get("priority")),
            "url": text(payload.get("link") or payload.get("url")),
        }
    return {
        "title": text(obj.get("title")),
        "message": text(obj.get("message")),
        "severity": text(obj.get("severity") or obj.get("urgency")),
        "priority": text(obj.get("priority")),
        "status": text(obj.get("status") or obj.get("transition")),
        "url": text(obj.get("url")),
    }


def _dedup_key(kind: str, payload: Mapping[str, Any], body: bytes) -> str:
    """The canonical kind + `$ID`, so `Incident.Created` and `incident.created` are one delivery."""
    ident = _filled(payload.get("id"))
    if ident:
        return f"{kind}:{ident}"
    # Without $ID in the template, identical bodies are the same delivery.
    return body_digest(body)


def _occurred_at(value: Any) -> str | None:
    """$DATE is epoch milliseconds as text; anything else is kept as the sender wrote it."""
    raw = text(value).strip()
    if not raw or raw.startswith("$"):
        return None
    return iso_from_epoch(raw) or raw
