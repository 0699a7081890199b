"""Prometheus Alertmanager webhooks (`webhook_config`, payload version 4): one event per alert.

Alertmanager cannot sign webhooks; its `http_config` sends ALERTMANAGER_WEBHOOK_SECRET
as a Bearer token (`authorization`) or a basic-auth password (`basic_auth`).
A notification is a group of alerts that may mix firing and resolved ones, so
each alert is its own event, `alert.firing` or `alert.resolved` by the alert's
own status, with its labels as tags. Grafana's webhook contact point sends the
same shape and reuses `group_events`.

An alert's dedup key is its fingerprint (a hash of its labels) + status + start
time; its digest covers the alert and the group as it was sent, except the
fields that name the delivering Alertmanager (`receiver`, `groupKey`,
`externalURL`), so the two members of an HA pair send one event, while a
still-firing alert re-sent at `repeat_interval` with changed annotations is a
new one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from caselink import auth
from caselink.auth import AuthPolicy
from caselink.bodies import json_body
from caselink.events import Event
from caselink.events import SenderKinds
from caselink.events import WebhookRequest
from caselink.events import canonical_kind
from caselink.normalise import content_digest
from caselink.normalise import first_text
from caselink.normalise import label_tags
from caselink.normalise import mapping
from caselink.normalise import unrecognised

SOURCE = "alertmanager"
# `alert.` + each alert's status, which Alertmanager (and Grafana) set to one of two.
KINDS = SenderKinds(documented=("alert.firing", "alert.resolved"))
# Fields of a notification that say which Alertmanager (or which of its receivers)
# delivered it, not what it says: two HA peers send the same alert with different ones.
_DELIVERER_FIELDS = frozenset(("receiver", "groupKey", "externalURL"))


def authenticate(request: WebhookRequest, policy: AuthPolicy) -> None:
    auth.check_token(request, policy)


def parse(request: WebhookRequest) -> Any:
    return json_body(request)


def normalise(payload: Any, request: WebhookRequest) -> list[Event]:
    return group_events(SOURCE, payload, request)


def group_events(source: str, payload: Any, request: WebhookRequest) -> list[Event]:
    """One event per alert of an Alertmanager-style group.

    Each event's payload is the body with `alerts` narrowed to that one alert,
    so `payload.commonLabels` and `payload.alerts.labels.pod` both work in
    rules, and a group of a thousand alerts is not stored a thousand times.
    """
    alerts = mapping(payload).get("alerts")
    if not isinstance(alerts, list):
        return [unrecognised(source, payload, request, "the body has no alerts list; is this an alert group?")]
    group = {name: value for name, value in payload.items() if name != "alerts"}
    events = []
    for index, alert in enumerate(alerts):
        narrowed = {**group, "alerts": [alert]}
        if not isinstance(alert, Mapping):
            events.append(
                unrecognised(source, narrowed, request, f"alerts[{index}] is not an object", part=f"alerts[{index}]")
            )
            continue
        status = first_text(alert.get("status"), group.get("status")).lower()
        if not canonical_kind(status):
            events.append(
                unrecognised(source, narrowed, request, f"alerts[{index}].status is missing", part=f"alerts[{index}]")
            )
            continue
        events.append(_alert_event(source, status, alert, narrowed, group))
    return events


def _alert_event(
    source: str, status: str, alert: Mapping[str, Any], payload: Mapping[str, Any], group: Mapping[str, Any]
) -> Event:
    labels = mapping(alert.get("labels"))
    annotations = mapping(alert.get("annotations"))
    starts_at = _time(alert.get("startsAt"))
    ends_at = _time(alert.get("endsAt"))
    return Event(
        source=source,
        kind=f"alert.{status}",
        dedup_key=f"{_fingerprint(alert, labels)}:{status}:{starts_at or ''}",
        # Grafana's group title and message, for an alert that names itself nowhere else.
        title=first_text(
            annotations.get("summary"), annotations.get("title"), labels.get("alertname"), group.get("title")
        ),
        message=first_text(annotations.get("description"), annotations.get("message"), group.get("message")),
        severity=first_text(labels.get("severity")),
        priority=first_text(labels.get("priority")),
        status=status,
        url=first_text(alert.get("generatorURL")),
        tags=label_tags(labels),
        occurred_at=(ends_at if status == "resolved" else None) or starts_at,
        payload=payload,
        digest=content_digest({name: value for name, value in payload.items() if name not in _DELIVERER_FIELDS}),
    )


def _fingerprint(alert: Mapping[str, Any], labels: Mapping[str, Any]) -> str:
    """The sender's fingerprint (a hash of the label set); the same idea when it is missing."""
    fingerprint = first_text(alert.get("fingerprint"))
    if fingerprint:
        return fingerprint
    canonical = json.dumps(labels, sort_keys=True, default=str).encode("utf-8")
    return "labels-sha256:" + hashlib.sha256(canonical).hexdigest()[:16]


def _time(value: Any) -> str | None:
    """A time as sent; None for Go's zero time, which is how Alertmanager writes "no end yet"."""
    moment = first_text(value)
    return None if not moment or moment.startswith("0001-01-01") else moment
