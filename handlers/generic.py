"""Any sender that follows Standard Webhooks (Svix and the services built on it, or your own scripts).

The sender signs `<webhook-id>.<webhook-timestamp>.<body>` with HMAC-SHA256
and sends `webhook-signature: v1,<base64>` (several, space-separated, while it
rotates secrets). GENERIC_WEBHOOK_SECRET holds the `whsec_…` secret(s),
comma-separated; the timestamp must be within ±WEBHOOK_TOLERANCE seconds of
receipt. Svix's unbranded `svix-id`/`svix-timestamp`/`svix-signature` are read
too. The payload is `{type, timestamp, data}`: `type` is the kind, and `data`
may carry title, message, severity, priority, status, url, tags and the
Datadog entity the event is about as `entity: {type, id}`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from caselink import auth
from caselink.auth import AuthPolicy
from caselink.bodies import json_body
from caselink.config import Secret
from caselink.errors import AuthenticationError
from caselink.events import ENTITY_TYPES
from caselink.events import EntityRef
from caselink.events import Event
from caselink.events import SenderKinds
from caselink.events import WebhookRequest
from caselink.events import canonical_kind
from caselink.events import parse_tags
from caselink.normalise import body_digest
from caselink.normalise import first_text
from caselink.normalise import mapping
from caselink.normalise import unrecognised

SOURCE = "generic"
# The sender's own `type`s: any kind.
KINDS = SenderKinds(documented=(), possible=("*",))
SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of a secret's text form, not a secret
_PREFIXES = ("webhook", "svix")


def authenticate(request: WebhookRequest, policy: AuthPolicy) -> None:
    secrets = policy.required_secrets()
    if not secrets:
        return
    msg_id = _header(request, "id")
    timestamp = _header(request, "timestamp")
    signatures = _header(request, "signature")
    presented = (("webhook-id", msg_id), ("webhook-timestamp", timestamp), ("webhook-signature", signatures))
    missing = [name for name, value in presented if value is None]
    if missing:
        raise AuthenticationError(
            f"missing {', '.join(missing)}: Standard Webhooks senders send all three", reason="missing_signature"
        )
    signed_at = auth.check_timestamp(timestamp, policy, "webhook-timestamp")
    message = f"{msg_id}.{signed_at}.".encode() + request.body
    expected = [auth.hmac_sha256(key, message) for key in _keys(secrets)]
    auth.require_signature(expected, _signatures(signatures or ""), "webhook-signature")


def _header(request: WebhookRequest, name: str) -> str | None:
    for prefix in _PREFIXES:
        value: str | None = request.headers.get(f"{prefix}-{name}")
        if value and value.strip():
            return value.strip()
    return None


def secret_key(secret: Secret) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (the prefix may be left off); ValueError if unreadable."""
    encoded = secret.reveal().strip().removeprefix(SECRET_PREFIX)
    # Senders show secrets with and without base64 padding.
    encoded += "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not a whsec_ base64 secret") from None
    if not key:
        raise ValueError("the secret is empty")
    return key


def _keys(secrets: tuple[Secret, ...]) -> list[bytes]:
    keys = []
    for secret in secrets:
        try:
            keys.append(secret_key(secret))
        except ValueError:
            # One unreadable secret must not stop the others during a rotation.
            continue
    if not keys:
        raise AuthenticationError(
            "GENERIC_WEBHOOK_SECRET holds no usable secret: each must be whsec_ followed by base64, "
            "as the sender shows it",
            reason="bad_secret_format",
        )
    return keys


def _signatures(header: str) -> list[bytes]:
    """The v1 signatures of `v1,<base64> v1,<base64>`; v1a (asymmetric) and bad base64 are left out."""
    found = []
    for item in header.split():
        version, _, value = item.partition(",")
        if version != "v1":
            continue
        try:
            found.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


def parse(request: WebhookRequest) -> Any:
    return json_body(request)


def normalise(payload: Any, request: WebhookRequest) -> list[Event]:
    if not isinstance(payload, Mapping):
        return [unrecognised(SOURCE, payload, request, "the body is JSON but not an object")]
    kind = first_text(payload.get("type"))
    if not canonical_kind(kind):
        return [unrecognised(SOURCE, payload, request, "type is missing or names no kind; it names the event")]
    data = mapping(payload.get("data"))
    entity, problem = _entity(data.get("entity"))
    return [
        Event(
            source=SOURCE,
            kind=kind,
            dedup_key=_header(request, "id") or body_digest(request.body),
            entity=entity,
            title=first_text(data.get("title")),
            message=first_text(data.get("message")),
            severity=first_text(data.get("severity")),
            priority=first_text(data.get("priority")),
            status=first_text(data.get("status")),
            url=first_text(data.get("url")),
            tags=parse_tags(data.get("tags")),
            occurred_at=first_text(payload.get("timestamp")) or None,
            payload=payload,
            problem=problem,
        )
    ]


def _entity(value: Any) -> tuple[EntityRef | None, str | None]:
    """data.entity as `{type, id}` or "TYPE:ID"; an unusable one is reported, not fatal."""
    if value is None:
        return None, None
    try:
        if isinstance(value, str):
            ref = EntityRef.parse(value)
            entity_type, ident = ref.type, ref.id
        else:
            entity = mapping(value)
            entity_type, ident = first_text(entity.get("type")).upper(), first_text(entity.get("id"))
            if entity_type not in ENTITY_TYPES:
                raise ValueError(f"type {entity_type or '(none)'!r} is not one of {', '.join(ENTITY_TYPES)}")
        return EntityRef.checked(entity_type, ident), None
    except ValueError as exc:
        return None, f"data.entity is not usable, so the event is about no entity: {exc}"
