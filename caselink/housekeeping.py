"""Housekeeping beside delivery: deferred evaluations, per-rule statistics counted from stored
events, then retention.

Both run in small batches, each its own short transaction, with a pause
between batches so that webhooks waiting for the write lock (SQLite) get it
at once: the webhook path never waits more than one batch. Statistics are
counted before pruning, and pruning removes only events already counted, so
per-rule statistics survive the events they were counted from.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from caselink import logs
from caselink.errors import CaselinkError
from caselink.store import Store

log = logs.get("housekeeping")


@dataclass
class Report:
    """What one round did: deferred events evaluated, events counted in the statistics, deleted
    (or due, in a dry run), kept for their unfinished links; how long it took and its longest
    write transaction (seconds)."""

    evaluated: int = 0
    counted: int = 0
    deleted: int = 0
    kept: int = 0
    seconds: float = 0.0
    longest_write: float = 0.0  # the longest prune write transaction, seconds


class Housekeeper:
    """Evaluates deferred events, counts per-rule statistics and prunes events older than
    `retention` seconds.

    `evaluate_deferred(limit)` evaluates up to `limit` events whose evaluation a webhook
    deferred (caselink.service.Service.evaluate_deferred) and returns how many it took.
    """

    evaluate_batch = 20
    # Deferred events wait for their links: evaluating them takes up to four fifths of the
    # process's CPU (a pause a quarter as long as each batch), where pruning takes a fifth. The
    # webhooks beside it keep their latency (bench/hostile_rules.py part 4: p99 0.055 s, 0.066
    # s while the same group held a request thread); a pause as long as each batch made the
    # group's last link wait 56 s instead of 35.
    evaluate_yield_share = 0.25
    count_batch = 200
    # A delete of 100 events stays well under 100 ms, even on a busy machine (bench/retention.py).
    prune_batch = 100
    # Between two batches, at least `pause` seconds and `yield_share` times what the batch took:
    # the webhooks queued on the write lock (SQLite) and on the CPU take their turn, and a large
    # backlog (retention set on an old database) is pruned at a steady fraction of the machine.
    pause = 0.02
    yield_share = 4.0

    def __init__(
        self,
        store: Store,
        retention: float,
        *,
        interval: float = 5.0,
        clock: Callable[[], float] = time.time,
        evaluate_deferred: Callable[[int], int] | None = None,
    ) -> None:
        self.store = store
        self.evaluate_deferred = evaluate_deferred
        self.retention = retention
        self.interval = interval
        self.clock = clock
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def round(self, *, dry_run: bool = False, stop: threading.Event | None = None) -> Report:
        """Evaluate every deferred event, count every event not yet counted, then prune every
        event past retention.

        `dry_run`: count nothing and delete nothing; `deleted` says how many
        events would go (those not yet counted are not among them).
        """
        stop = stop or self._stop
        started = time.monotonic()
        report = Report()
        while not dry_run and self.evaluate_deferred is not None and not stop.is_set():
            took = time.monotonic()
            evaluated = self.evaluate_deferred(self.evaluate_batch)
            took = time.monotonic() - took
            report.evaluated += evaluated
            if evaluated < self.evaluate_batch:
                break
            stop.wait(max(self.pause, took * self.evaluate_yield_share))
        while not dry_run and not stop.is_set():
            took = time.monotonic()
            counted = self.store.count_rule_stats(limit=self.count_batch, now=self.clock())
            took = time.monotonic() - took
            report.counted += counted
            if counted < self.count_batch:
                break
            stop.wait(max(self.pause, took * self.yield_share))
        before = self.clock() - self.retention
        after = 0
        while not stop.is_set():
            took = time.monotonic()
            batch = self.store.prune_events(before, after_id=after, limit=self.prune_batch, dry_run=dry_run)
            took = time.monotonic() - took
            report.deleted += batch.deleted
            report.kept += batch.kept
            report.longest_write = max(report.longest_write, batch.write_seconds)
            after = batch.last_id
            if batch.done:
                break
            if batch.deleted:
                stop.wait(max(self.pause, took * self.yield_share))
        report.seconds = time.monotonic() - started
        return report

    # -- in the background --------------------------------------------------

    def start(self) -> None:
        """Run rounds every `interval` seconds in a background thread until stop()."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="caselink-housekeeping", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Start the next round now rather than after `interval` (a webhook deferred evaluations)."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                report = self.round()
                failures = 0
            except CaselinkError as exc:
                failures += 1
                log.error("housekeeping failed", extra={"fields": {"error": exc.message}})
            except Exception:
                failures += 1
                log.exception("housekeeping failed")
            else:
                if report.evaluated:
                    log.info("deferred events evaluated", extra={"fields": {"events": report.evaluated}})
                # Kept events are kept again every round: only a deletion is news at INFO.
                if report.deleted or report.kept:
                    log.log(
                        logging.INFO if report.deleted else logging.DEBUG,
                        "events pruned",
                        extra={
                            "fields": {
                                "deleted": report.deleted,
                                "kept_for_links": report.kept,
                                "counted": report.counted,
                                "duration_ms": round(report.seconds * 1000, 1),
                            }
                        },
                    )
            self._wake.wait(min(300.0, self.interval * 2**failures))
            self._wake.clear()
