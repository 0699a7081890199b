"""One notification per sender, built from a delivery id and a text: for tests of the dedup rule.

`notification(source, ident, text)` is a body (and the headers that carry an
id, for Standard Webhooks) whose dedup key is made from `ident` only, with
`text` in the event's title; `dedup_key(source, ident)` is that key as the
handler makes it. Changing `text` and keeping `ident` is "same key, other
content", the case a key must never merge.
"""

from __future__ import annotations

import json

SOURCES = ("datadog", "pagerduty", "opsgenie", "alertmanager", "grafana", "generic")
INCIDENT = "3b1f0c2e-9a7d-4e55-8c21-6f0e2d9a1b44"


def notification(source: str, ident: str, text: str) -> tuple[bytes, dict[str, str]]:
    """A body as `source` sends it, and the id headers it sends with it (not authentication)."""
    headers: dict[str, str] = {}
    if source == "datadog":
        payload = {
            "event": "incident.updated",
            "id": ident,
            "date": "1764494400000",
            "incident": {"id": INCIDENT, "title": text, "severity": "SEV-2", "status": "active"},
            "tags": "service:payments-api",
        }
    elif source == "pagerduty":
        payload = {
            "event": {
                "id": ident,
                "event_type": "incident.triggered",
                "resource_type": "incident",
                "occurred_at": "2026-11-26T09:14:22.169Z",
                "data": {"id": "Q1PTF0WSMUMIL6", "type": "incident", "title": text, "urgency": "high"},
            }
        }
    elif source == "opsgenie":
        payload = {
            "action": "Create",
            "alert": {"alertId": ident, "message": text, "priority": "P2", "updatedAt": 1764151200000000000},
        }
    elif source in ("alertmanager", "grafana"):
        payload = {
            "receiver": "caselink",
            "status": "firing",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": "DiskFull", "instance": "db-3"},
                    "annotations": {"summary": text},
                    "startsAt": "2026-11-26T09:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z",
                    "fingerprint": ident,
                }
            ],
            "groupLabels": {"alertname": "DiskFull"},
            "commonLabels": {"alertname": "DiskFull", "instance": "db-3"},
            "externalURL": "http://alertmanager:9093",
            "version": "4",
            "groupKey": '{}:{alertname="DiskFull"}',
        }
    elif source == "generic":
        payload = {"type": "incident.updated", "timestamp": "2026-11-26T09:15:00Z", "data": {"title": text}}
        headers["webhook-id"] = ident
    else:
        raise ValueError(source)
    return json.dumps(payload).encode(), headers


def dedup_key(source: str, ident: str) -> str:
    """The dedup key the handler makes of `notification(source, ident, …)`."""
    if source == "datadog":
        return f"incident.updated:{ident}"
    if source == "opsgenie":
        return f"{ident}:create:1764151200000000000"
    if source in ("alertmanager", "grafana"):
        return f"{ident}:firing:2026-11-26T09:00:00Z"
    return ident
