"""Metrics: what the webhook path counts reaches prometheus_client within a second, bucket for bucket."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Histogram

from caselink.metrics import Tally

BUCKETS = (0.001, 0.01, 0.1, 1)


def metrics() -> tuple[CollectorRegistry, Counter, Histogram, Histogram]:
    registry = CollectorRegistry()
    counter = Counter("things_total", "Things.", ["kind"], registry=registry)
    tallied = Histogram("tallied_seconds", "Through the tally.", buckets=BUCKETS, registry=registry)
    direct = Histogram("direct_seconds", "Observed directly.", buckets=BUCKETS, registry=registry)
    return registry, counter, tallied, direct


def samples(registry: CollectorRegistry, name: str) -> dict[tuple, float]:
    return {
        (sample.name.removeprefix(name), tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name.startswith(name) and not sample.name.endswith("_created")
    }


def test_counts_and_observations_reach_the_metrics_when_flushed():
    registry, counter, tallied, direct = metrics()
    tally = Tally()
    values = [0.0005, 0.001, 0.004, 0.05, 0.5, 3.0, 0.01]

    tally.count(counter, "a")
    tally.count(counter, "a", amount=2)
    tally.count(counter, "b")
    for value in values:
        tally.observe(tallied, value)
        direct.observe(value)
    assert counter.labels("a")._value.get() == 0  # gathered, not yet handed over

    tally.flush()

    assert counter.labels("a")._value.get() == 3
    assert counter.labels("b")._value.get() == 1
    assert samples(registry, "tallied_seconds") == samples(registry, "direct_seconds")


def test_a_background_thread_hands_counts_over_within_the_interval():
    _, counter, _, _ = metrics()
    tally = Tally()
    tally.interval = 0.05

    tally.count(counter, "a")
    deadline = time.monotonic() + 2
    while counter.labels("a")._value.get() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)

    assert counter.labels("a")._value.get() == 1


def test_a_forked_child_does_not_count_again_what_its_parent_gathered():
    _, counter, _, _ = metrics()
    tally = Tally()
    tally.count(counter, "a")

    tally._forget()  # what os.fork runs in the child
    tally.flush()

    assert counter.labels("a")._value.get() == 0
