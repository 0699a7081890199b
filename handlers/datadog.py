"""Datadog webhooks: incident, case, On-Call page and monitor alert notifications.

Datadog does not sign webhooks, so the sender presents DATADOG_WEBHOOK_SECRET
as a Bearer token, a basic-auth password or an X-Webhook-Token header. The
body is the JSON template from the README, or Datadog's default payload; with
"encode as form" its top-level keys arrive as form fields.
"""

from __future__ import annotations

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
# The kinds of the README's templates and of bodies without `event`; a template of
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
    kind = text(payload.get("event")).strip()
    if not canonical_kind(kind):
        kind = _kind_without_event(name, obj, payload)
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


def _kind_without_event(name: str | None, obj: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
    if name == "alert" and obj.get("transition"):
        return "alert." + text(obj["transition"]).strip().lower().replace(" ", "_")
    if name is not None:
        return f"{name}.notification"
    # Datadog's default payload names the event type in event_type.
    event_type = text(payload.get("event_type")).strip()
    return event_type if canonical_kind(event_type) else "notification"


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
    ident = text(payload.get("id")).strip()
    if ident and not ident.startswith("$"):
        return f"{kind}:{ident}"
    # Without $ID in the template, identical bodies are the same delivery.
    return body_digest(body)


def _occurred_at(value: Any) -> str | None:
    """$DATE is epoch milliseconds as text; anything else is kept as the sender wrote it."""
    raw = text(value).strip()
    if not raw or raw.startswith("$"):
        return None
    return iso_from_epoch(raw) or raw
