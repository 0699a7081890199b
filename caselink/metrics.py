"""Prometheus metrics.

Counters live in this process (in PROMETHEUS_MULTIPROC_DIR under gunicorn, so
every worker process adds to the same figures); the queue depth is read from
the store when /metrics is scraped, so it is the same whichever process answers.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Histogram
from prometheus_client import generate_latest
from prometheus_client import multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY
from prometheus_client.registry import Collector

WEBHOOKS = Counter(
    "caselink_webhooks_total", "Webhook requests answered, by source and HTTP status.", ["source", "status"]
)
EVENTS = Counter(
    "caselink_events_total", "Events received, by source and whether they were new.", ["source", "outcome"]
)
RULE_MATCHES = Counter("caselink_rule_matches_total", "Events a rule matched.", ["rule"])
LINKS_PLANNED = Counter("caselink_links_planned_total", "Links planned by rules.", ["rule"])
WEBHOOK_SECONDS = Histogram(
    "caselink_webhook_seconds",
    "Time to answer a webhook.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
DELIVERIES = Counter(
    "caselink_deliveries_total",
    "Delivery attempts, by outcome (created, existing, retry, dead, rate_limited, paused, …).",
    ["outcome"],
)
DELIVERY_SECONDS = Histogram("caselink_delivery_seconds", "Time for one delivery attempt.")
PAUSED = Gauge("caselink_delivery_paused", "1 while Datadog rejects the credentials.", multiprocess_mode="max")
RULES_LOADED = Gauge(
    "caselink_rules_last_reload_successful",
    "1 when the last load of the rules file succeeded.",
    multiprocess_mode="min",
)


_children: dict[tuple[object, tuple[str, ...]], Any] = {}


def labelled(metric: Counter, *values: str) -> Any:
    """`metric.labels(*values)`, remembered: prometheus_client validates and locks on every call."""
    child = _children.get((metric, values))
    if child is None:
        child = _children.setdefault((metric, values), metric.labels(*values))
    return child


class QueueCollector(Collector):
    """caselink_links{state=…}: links in each state, read from the store at scrape time."""

    def __init__(self, count_links: Callable[[], dict[str, int]]) -> None:
        self.count_links = count_links

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("caselink_links", "Links by delivery state.", labels=["state"])
        try:
            counts = self.count_links()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the store is down
            counts = {}
        for state, count in counts.items():
            family.add_metric([state], count)
        yield family


def render(count_links: Callable[[], dict[str, int]], multiproc_dir: str | None) -> bytes:
    """The text exposition of every metric, including the queue read from the store."""
    if multiproc_dir:
        counters = CollectorRegistry()
        multiprocess.MultiProcessCollector(counters, path=multiproc_dir)
    else:
        counters = REGISTRY
    queue = CollectorRegistry()
    queue.register(QueueCollector(count_links))
    return generate_latest(counters) + generate_latest(queue)
