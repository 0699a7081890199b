"""Helpers for handler tests: requests as the web layer builds them, policies, and signing as senders do it."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from caselink.auth import AuthPolicy
from caselink.config import Secret
from caselink.events import Event
from caselink.events import Headers
from caselink.events import WebhookRequest

NOW = 1_764_151_200.0
"""When the unit tests' requests arrive (2025-11-26T10:00:00Z)."""

# Bodies that are JSON but not what any sender sends; no handler may raise on them.
ODD_PAYLOADS = [
    b"[]",
    b"null",
    b'"text"',
    b"42",
    b"{}",
    b'{"event": []}',
    b'{"event": {"event_type": 7, "data": "x"}}',
    b'{"alert": {"alertId": null, "tags": 5, "details": [1]}, "action": {}}',
    b'{"alerts": [1, null, {"labels": [], "annotations": "x", "status": "firing"}]}',
    b'{"alerts": "many"}',
    b'{"type": {"a": 1}, "data": [1]}',
    b'{"type": "x.y", "data": {"entity": 5, "tags": 7, "title": {"a": 1}}}',
]


def webhook(
    source: str,
    body: bytes | str,
    headers: dict[str, str] | None = None,
    *,
    content_type: str = "application/json",
    received_at: float = NOW,
) -> WebhookRequest:
    data = body.encode() if isinstance(body, str) else body
    return WebhookRequest(source, data, Headers(headers or {}), content_type, received_at)


def policy(source: str, *secrets: str, open_without_secret: bool = False, **changes: Any) -> AuthPolicy:
    return AuthPolicy(
        source=source,
        secrets=tuple(Secret(secret) for secret in secrets),
        open_without_secret=open_without_secret,
        now=changes.pop("now", NOW),
        **changes,
    )


def events(module: Any, request: WebhookRequest) -> list[Event]:
    """Parse and normalise as the service does after authentication."""
    return module.normalise(module.parse(request), request)


def without_payload(event: Event) -> dict[str, Any]:
    fields = event.fields()
    fields.pop("payload")
    return fields


def hex_hmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def pagerduty_signature(body: bytes, *secrets: str) -> str:
    """X-PagerDuty-Signature as PagerDuty sends it: one v1= value per active secret."""
    return ",".join(f"v1={hex_hmac(secret, body)}" for secret in secrets)


def grafana_signature(body: bytes, secret: str, timestamp: str | None = None) -> str:
    """X-Grafana-Alerting-Signature: bare hex, over `<ts>:<body>` when a timestamp header is sent."""
    message = body if timestamp is None else timestamp.encode() + b":" + body
    return hex_hmac(secret, message)


def standard_signature(msg_id: str, timestamp: str, body: bytes, secret: str) -> str:
    """One `v1,<base64>` entry of webhook-signature, as the Standard Webhooks libraries sign."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def standard_headers(msg_id: str, timestamp: float, body: bytes, *secrets: str) -> dict[str, str]:
    stamp = str(int(timestamp))
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": " ".join(standard_signature(msg_id, stamp, body, secret) for secret in secrets),
    }


def basic_auth(password: str, user: str = "caselink") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
