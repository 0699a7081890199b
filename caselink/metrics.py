"""Prometheus metrics.

Counters live in this process (in PROMETHEUS_MULTIPROC_DIR under gunicorn, so
every worker process adds to the same figures); what the webhook path counts
goes through `TALLY`, a second behind. The queue depth is read from the store
when /metrics is scraped, so it is the same whichever process answers.
"""

from __future__ import annotations

import atexit
import bisect
import os
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Histogram
from prometheus_client import generate_latest
from prometheus_client import multiprocess
from prometheus_client.core import CounterMetricFamily
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY
from prometheus_client.registry import Collector

WEBHOOKS = Counter(
    "caselink_webhooks_total", "Webhook requests answered, by source and HTTP status.", ["source", "status"]
)
EVENTS = Counter(
    "caselink_events_total", "Events received, by source and whether they were new.", ["source", "outcome"]
)
REJECTED = Counter(
    "caselink_rejected_deliveries_total",
    "Authenticated webhooks refused because their body could not be read (kept as events of kind rejected), "
    "by source and reason.",
    ["source", "reason"],
)
DEDUP_CONFLICTS = Counter(
    "caselink_dedup_conflicts_total",
    "Events whose dedup key repeated an earlier event's with different content, stored as new events, by source.",
    ["source"],
)
DEFERRED = Counter(
    "caselink_events_deferred_total",
    "Events stored with their evaluation deferred (their webhook's events had used the request's"
    " evaluation time), by source; housekeeping evaluates them.",
    ["source"],
)
CONNECTIONS_SHED = Counter(
    "caselink_connections_shed_total",
    "Connections a worker closed at its cap (worker_connections) to take a new one, by what they were doing:"
    " idle (kept alive, or sent nothing yet) or sending (a request still arriving, answered 503).",
    ["state"],
)
CONNECTIONS_REBALANCED = Counter(
    "caselink_connections_rebalanced_total",
    "Kept-alive connections a worker closed after an answer (Connection: close) while a sibling worker held"
    " fewer: the client connects again and the sibling takes the new connection (caselink/serving.py).",
)
WEBHOOK_SECONDS = Histogram(
    "caselink_webhook_seconds",
    "Time to answer a webhook.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
DELIVERIES = Counter(
    "caselink_deliveries_total",
    "Delivery attempts, by outcome (created, existing, retry, dead, rate_limited, paused, postponed: waits for"
    " its case's next listing, …).",
    ["outcome"],
)
DELIVERY_SECONDS = Histogram("caselink_delivery_seconds", "Time for one delivery attempt.")
PAUSED = Gauge("caselink_delivery_paused", "1 while Datadog rejects the credentials.", multiprocess_mode="max")
# The lowest value among live processes: 0 if any serving process failed its
# last load. gunicorn's master imports this module too, so it sets its own
# sample once its preflight has loaded the rules (gunicorn.conf.py); a dead
# process's sample is dropped with it.
RULES_LOADED = Gauge(
    "caselink_rules_last_reload_successful",
    "1 when the last load of the rules file succeeded.",
    multiprocess_mode="livemin",
)
RULES_FILE_IN_FORCE = Gauge(
    "caselink_rules_file_in_force",
    "1 when the rules file on disk is the one the rules in force came from; 0 while it differs"
    " (being loaded, or refused: see caselink_rules_last_reload_successful and /readyz).",
    # Live processes only, as above: a dead worker's last sample (or the master's before its
    # preflight set it) must not hold the figure at 0 for good.
    multiprocess_mode="livemin",
)


class Tally:
    """Counts gathered in this process and added to the metrics within a second.

    Under gunicorn every `inc()` of a multiprocess metric takes a lock, asks the
    kernel for the process id and writes a memory-mapped file, and a webhook
    made six of them. Here a webhook adds to a few numbers in memory; a
    background thread, every /metrics answer and the process's exit hand the
    sums over in one go. Histograms are summed per bucket as
    `Histogram.observe` does (prometheus_client is pinned; tests read them back).
    """

    interval = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[Counter, tuple[str, ...]], float] = {}
        self._histograms: dict[Histogram, list[float]] = {}  # per bucket, then the sum
        self._flushing = False
        os.register_at_fork(after_in_child=self._forget)

    def count(self, metric: Counter, *labels: str, amount: float = 1.0) -> None:
        key = (metric, labels)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0.0) + amount
        if not self._flushing:
            self._start_flushing()

    def observe(self, histogram: Histogram, value: float) -> None:
        bounds = histogram._upper_bounds  # noqa: SLF001
        with self._lock:
            sums = self._histograms.get(histogram)
            if sums is None:
                sums = self._histograms[histogram] = [0.0] * (len(bounds) + 1)
            sums[bisect.bisect_left(bounds, value)] += 1
            sums[-1] += value
        if not self._flushing:
            self._start_flushing()

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, {}
            histograms, self._histograms = self._histograms, {}
        for (metric, labels), amount in counts.items():
            (metric.labels(*labels) if labels else metric).inc(amount)
        for histogram, sums in histograms.items():
            histogram._sum.inc(sums[-1])  # noqa: SLF001
            for bucket, observed in zip(histogram._buckets, sums[:-1], strict=True):  # noqa: SLF001
                if observed:
                    bucket.inc(observed)

    def _start_flushing(self) -> None:
        with self._lock:
            if self._flushing:
                return
            self._flushing = True
        threading.Thread(target=self._flush_forever, name="caselink-metrics", daemon=True).start()
        atexit.register(self.flush)

    def _flush_forever(self) -> None:
        while True:
            time.sleep(self.interval)
            self.flush()

    def _forget(self) -> None:
        # A forked child has no flushing thread, and its parent counts what it had gathered.
        self._lock = threading.Lock()
        self._counts, self._histograms, self._flushing = {}, {}, False


TALLY = Tally()


class QueueCollector(Collector):
    """caselink_links{state=…}: links in each state, and caselink_events_deferred: events waiting
    for their evaluation; read from the store at scrape time."""

    def __init__(
        self, count_links: Callable[[], dict[str, int]], count_deferred: Callable[[], int] | None = None
    ) -> None:
        self.count_links = count_links
        self.count_deferred = count_deferred

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("caselink_links", "Links by delivery state.", labels=["state"])
        try:
            counts = self.count_links()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the store is down
            counts = {}
        for state, count in counts.items():
            family.add_metric([state], count)
        yield family
        if self.count_deferred is None:
            return
        try:
            waiting = self.count_deferred()
        except Exception:  # noqa: BLE001 - as above
            return
        yield GaugeMetricFamily(
            "caselink_events_deferred",
            "Events waiting for their evaluation: housekeeping (a web process's, or `worker`'s) evaluates them.",
            value=waiting,
        )


class RuleCollector(Collector):
    """caselink_rule_matches_total{rule} and caselink_rule_links_planned_total{rule}, for the rules in force.

    Read from the per-rule statistics in the store at scrape time: the same in
    every process, kept across restarts and pruning, nothing counted on the
    webhook path, and one series per rule in force (a removed rule's series
    goes with it). They trail the webhooks by the housekeeping interval.
    """

    def __init__(self, rule_totals: Callable[[], dict[str, tuple[int, int]]]) -> None:
        self.rule_totals = rule_totals

    def collect(self) -> Iterator[CounterMetricFamily]:
        matches = CounterMetricFamily("caselink_rule_matches", "Events a rule matched.", labels=["rule"])
        planned = CounterMetricFamily("caselink_rule_links_planned", "Links a rule planned.", labels=["rule"])
        try:
            totals = self.rule_totals()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the store is down
            totals = {}
        for rule, (matched, links) in totals.items():
            matches.add_metric([rule], matched)
            planned.add_metric([rule], links)
        yield matches
        yield planned


def render(
    count_links: Callable[[], dict[str, int]],
    multiproc_dir: str | None,
    rule_totals: Callable[[], dict[str, tuple[int, int]]] | None = None,
    count_deferred: Callable[[], int] | None = None,
) -> bytes:
    """The text exposition of every metric, including the queue and per-rule counts read from the store."""
    TALLY.flush()
    if multiproc_dir:
        counters = CollectorRegistry()
        # prometheus_client leaves this constructor unannotated.
        multiprocess.MultiProcessCollector(counters, path=multiproc_dir)  # type: ignore[no-untyped-call]
    else:
        counters = REGISTRY
    queue = CollectorRegistry()
    queue.register(QueueCollector(count_links, count_deferred))
    if rule_totals is not None:
        queue.register(RuleCollector(rule_totals))
    return generate_latest(counters) + generate_latest(queue)
