"""Webhook handlers, one module per sender.

Each module does one thing in three steps: `authenticate` the raw request,
`parse` its body, `normalise` the result into events. `REGISTRY` maps the
`<source>` of `POST /webhooks/<source>` to its module.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any
from typing import Protocol

from caselink.auth import AuthPolicy
from caselink.events import Event
from caselink.events import WebhookRequest
from handlers import alertmanager
from handlers import datadog
from handlers import generic
from handlers import grafana
from handlers import opsgenie
from handlers import pagerduty


class Handler(Protocol):
    """The shape every handler module has."""

    def authenticate(self, request: WebhookRequest, policy: AuthPolicy) -> None: ...

    def parse(self, request: WebhookRequest) -> Any: ...

    def normalise(self, payload: Any, request: WebhookRequest) -> list[Event]: ...


REGISTRY: dict[str, ModuleType] = {
    "datadog": datadog,
    "pagerduty": pagerduty,
    "opsgenie": opsgenie,
    "alertmanager": alertmanager,
    "grafana": grafana,
    "generic": generic,
}
