"""Grafana Alerting's webhook contact point: one event per alert, as for Alertmanager.

Grafana 12 can sign the body with the contact point's HMAC secret:
`X-Grafana-Alerting-Signature: <hex HMAC-SHA256>`, over `<timestamp>:<body>`
when a timestamp header is configured too (the timestamp must then be within
±WEBHOOK_TOLERANCE seconds of receipt). Both header names can be changed in
Grafana, so caselink reads them from GRAFANA_SIGNATURE_HEADER and
GRAFANA_TIMESTAMP_HEADER. Without a signature header, GRAFANA_WEBHOOK_SECRET
is expected as a shared token instead (Bearer, basic-auth password or
X-Webhook-Token), for Grafana versions before 12.
"""

from __future__ import annotations

from typing import Any

from caselink import auth
from caselink.auth import AuthPolicy
from caselink.bodies import json_body
from caselink.events import Event
from caselink.events import WebhookRequest
from handlers import alertmanager
from handlers.alertmanager import group_events

SOURCE = "grafana"
KINDS = alertmanager.KINDS


def authenticate(request: WebhookRequest, policy: AuthPolicy) -> None:
    signature = request.headers.get(policy.grafana_signature_header)
    if signature is None:
        auth.check_token(request, policy)
        return
    secrets = policy.required_secrets()
    if not secrets:
        return
    message = request.body
    timestamp = request.headers.get(policy.grafana_timestamp_header)
    if timestamp is not None:
        signed_at = auth.check_timestamp(timestamp, policy, policy.grafana_timestamp_header)
        message = signed_at.encode("ascii") + b":" + request.body
    # Grafana uses the secret as UTF-8 bytes and sends one bare lowercase hex digest.
    expected = [auth.hmac_sha256(secret.reveal().encode("utf-8"), message) for secret in secrets]
    try:
        presented = [bytes.fromhex(signature.strip())] if signature.strip() else []
    except ValueError:
        presented = []
    auth.require_signature(expected, presented, policy.grafana_signature_header)


def parse(request: WebhookRequest) -> Any:
    return json_body(request)


def normalise(payload: Any, request: WebhookRequest) -> list[Event]:
    return group_events(SOURCE, payload, request)
