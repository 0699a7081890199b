"""The delivery worker: claims planned links and makes them exist in Datadog, once.

For each claimed link it resolves case keys to UUIDs, renews its lease, asks
Datadog whether the link already exists, and only then creates it. Transient
failures go back to the queue with exponential backoff and jitter; rejected
credentials pause delivery instead of burning the queue; anything else that
can never succeed becomes a dead letter with its reason.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait
from dataclasses import dataclass
from typing import TypeVar

from caselink import logs
from caselink import metrics
from caselink.config import Settings
from caselink.datadog import CREATE_LINK
from caselink.datadog import LIST_LINKS
from caselink.datadog import DatadogClient
from caselink.datadog import ResolvedLink
from caselink.errors import CaselinkError
from caselink.errors import DatadogAuthError
from caselink.errors import DatadogRateLimitedError
from caselink.errors import DatadogRejectedError
from caselink.errors import DatadogUnavailableError
from caselink.errors import StoreUnavailableError
from caselink.store import Job
from caselink.store import Store

CREDENTIALS_STATE = "datadog_credentials"
T = TypeVar("T")
log = logs.get("worker")


@dataclass
class Pause:
    """Delivery is paused because Datadog rejected the keys; probe again at `probe_at`."""

    reason: str
    probe_at: float
    delay: float


class DeliveryWorker:
    """Delivers links from the store to Datadog with a small pool of threads."""

    def __init__(
        self,
        store: Store,
        client: DatadogClient,
        settings: Settings,
        *,
        name: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.clock = clock
        self.pause: Pause | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=settings.worker_concurrency, thread_name_prefix="caselink-delivery")
        self._running: dict[Future[None], Job] = {}
        # True when the last claim found less than it had room for.
        self._idle = False
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Run the loop in a background thread (the in-process worker of a web process)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self.run, name="caselink-worker", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """New work was planned: stop waiting."""
        self._wake.set()

    def stop_soon(self) -> None:
        """Ask the loop to stop claiming (safe from a signal handler)."""
        self._stopping.set()
        self._wake.set()

    def stop(self, grace: float = 20.0) -> None:
        """Stop claiming, let deliveries under way finish within `grace`, release the rest."""
        self.stop_soon()
        if self._thread is not None:
            self._thread.join(grace)
        deadline = time.monotonic() + grace
        with self._lock:
            running = dict(self._running)
        if running:
            wait(running, timeout=max(deadline - time.monotonic(), 0))
        with self._lock:
            unfinished = [job for future, job in self._running.items() if not future.done()]
        for job in unfinished:
            try:
                self.store.retry_later(job, "released at shutdown", at=self.clock(), count_attempt=False)
            except CaselinkError:
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)
        log.info("worker stopped", extra={"fields": {"worker": self.name, "released": len(unfinished)}})

    # -- the loop ---------------------------------------------------------------

    def run(self) -> None:
        """Claim and deliver until stop() is called."""
        log.info(
            "worker started",
            extra={
                "fields": {
                    "worker": self.name,
                    "concurrency": self.settings.worker_concurrency,
                    "datadog": self.client.display_url,
                }
            },
        )
        self._check_recorded_rejection()
        threading.Thread(
            target=self.store.listen, args=(self.notify, self._stopping), name="caselink-listen", daemon=True
        ).start()
        failures = 0
        while not self._stopping.is_set():
            try:
                self._step()
                failures = 0
            except StoreUnavailableError as exc:
                failures += 1
                delay = min(30.0, 0.5 * 2**failures)
                log.error(
                    "store unavailable",
                    extra={"fields": {"worker": self.name, "error": exc.message, "retry_in": delay}},
                )
                self._stopping.wait(delay)
                continue
            except Exception:
                failures += 1
                log.exception("worker loop failed", extra={"fields": {"worker": self.name}})
                self._stopping.wait(min(30.0, 0.5 * 2**failures))

    def _step(self) -> None:
        """One turn of the loop: claim what there is room for, or wait."""
        self._reap()
        if self.pause is not None:
            if self.clock() < self.pause.probe_at:
                self._sleep(self.pause.probe_at - self.clock())
                return
            self._probe()
            return
        held_back = max(self.client.limiter.wait_time(LIST_LINKS, CREATE_LINK), self.client.failure_wait())
        if held_back > 0:
            # The budget is spent: claiming now would only put links straight back.
            self._sleep(held_back)
            return
        free = self.settings.worker_concurrency - len(self._running)
        if free <= 0:
            with self._lock:
                running = list(self._running)
            wait(running, timeout=self.settings.worker_poll_interval, return_when=FIRST_COMPLETED)
            return
        if self._idle and not self._wake.is_set():
            # Nothing was due last time and nobody woke us: look before taking
            # the write lock, which a claim needs and a webhook is waiting for.
            due = self.store.next_due()
            if due is None or due > self.clock():
                delay = self.settings.worker_poll_interval
                self._sleep(delay if due is None else min(delay, due - self.clock()))
                return
        self._wake.clear()
        jobs = self.store.claim(self.name, free, self.settings.delivery_lease, now=self.clock())
        self._idle = len(jobs) < free
        for job in jobs:
            future = self._pool.submit(self.deliver, job)
            with self._lock:
                self._running[future] = job

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._wake.wait(seconds)

    def _reap(self) -> None:
        with self._lock:
            for future in [future for future in self._running if future.done()]:
                del self._running[future]

    def run_until_idle(self, timeout: float = 30.0) -> None:
        """Deliver everything due now, then return (tests and `flask worker --once`).

        Returns early while Datadog rejects the keys (`pause` then says why):
        nothing can be delivered until they change.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pause is None:
            held_back = max(self.client.limiter.wait_time(LIST_LINKS, CREATE_LINK), self.client.failure_wait())
            if held_back > 0:
                time.sleep(min(held_back, max(deadline - time.monotonic(), 0)))
                continue
            jobs = self.store.claim(
                self.name, self.settings.worker_concurrency, self.settings.delivery_lease, now=self.clock()
            )
            if not jobs:
                return
            futures = [self._pool.submit(self.deliver, job) for job in jobs]
            wait(futures)

    # -- one delivery -------------------------------------------------------

    def deliver(self, job: Job) -> None:
        started = time.monotonic()
        outcome, status, error = "created", None, None
        try:
            outcome = self._deliver(job)
        except DatadogAuthError as exc:
            outcome, status, error = "paused", exc.http_status, exc.message
            probe_at = self._pause_for(exc)
            # Due when the keys are next probed, not now: a link due now would be claimed straight back.
            self.store.retry_later(job, exc.message, at=probe_at, status=exc.http_status, count_attempt=False)
        except DatadogRateLimitedError as exc:
            outcome, status, error = "rate_limited", exc.http_status, exc.message
            retry_after = exc.retry_after if exc.retry_after is not None else self._backoff(job.attempts)
            self.store.retry_later(
                job, exc.message, at=self.clock() + retry_after, status=exc.http_status, count_attempt=False
            )
        except DatadogUnavailableError as exc:
            status, error = exc.http_status, exc.message
            if job.attempts >= self.settings.delivery_max_attempts:
                outcome = "dead"
                self.store.dead(job, f"gave up after {job.attempts} attempts: {exc.message}", status=status)
            else:
                outcome = "retry"
                self.store.retry_later(job, exc.message, at=self.clock() + self._backoff(job.attempts), status=status)
        except DatadogRejectedError as exc:
            outcome, status, error = "dead", exc.http_status, exc.message
            self.store.dead(job, exc.message, status=status)
        except StoreUnavailableError as exc:
            # The lease runs out and another worker (or this one) takes the link again.
            outcome, error = "store_unavailable", exc.message
        except Exception as exc:
            outcome, error = "error", f"{type(exc).__name__}: {exc}"
            log.exception("delivery failed unexpectedly", extra={"fields": {"link": job.id}})
            try:
                self.store.retry_later(job, error, at=self.clock() + self._backoff(job.attempts))
            except CaselinkError:
                pass
        finally:
            duration = time.monotonic() - started
        metrics.DELIVERIES.labels(outcome=outcome).inc()
        metrics.DELIVERY_SECONDS.observe(duration)
        fields = {
            "worker": self.name,
            "link": job.id,
            "planned": str(job),
            "attempt": job.attempts,
            "outcome": outcome,
            "duration_ms": round(duration * 1000, 1),
        }
        if status is not None:
            fields["status"] = status
        if error is not None:
            fields["error"] = error
        level = 40 if outcome in ("dead", "error") else 30 if outcome in ("paused", "retry") else 20
        log.log(level, "delivery", extra={"fields": fields})

    def _deliver(self, job: Job) -> str:
        parent_id = job.parent_id or self._within_budget(lambda: self.client.case_id(job.parent.id))
        child_id = job.child_id or self._within_budget(lambda: self.client.case_id(job.child.id))
        held, twin = self.store.prepare(job, parent_id, child_id, lease=self.settings.delivery_lease, now=self.clock())
        if twin is not None:
            return "merged"
        if not held:
            return "lease_lost"
        link = ResolvedLink(job.parent.type, parent_id, job.relationship, job.child.type, child_id)
        # A first attempt may use a listing of the case that other deliveries made a
        # moment ago; after any earlier attempt (a timeout, a 5xx, a lease that ran
        # out) the POST may have taken effect, so Datadog is asked again now.
        existing = self._within_budget(lambda: self.client.find_link(link, recent=job.first_attempt))
        self._credentials_work()
        if existing is not None:
            self.store.delivered(job, existing, existed=True, now=self.clock())
            return "existing"
        link_id = self._within_budget(lambda: self.client.create_link(link))
        if not self.store.delivered(job, link_id, existed=False, now=self.clock()):
            return "lease_lost"
        return "created"

    def _within_budget(self, call: Callable[[], T]) -> T:
        """Make a call, waiting here for a rate limit that resets soon rather than re-queueing.

        Waiting in place keeps a claimed, half-done delivery moving the moment the
        budget returns; a long wait (or a stop) goes back to the queue instead.
        """
        longest = min(10.0, self.settings.delivery_lease / 4)
        while True:
            pause = self.pause
            if pause is not None:
                # Another delivery found the keys rejected: send nothing more until the probe.
                raise DatadogAuthError(f"delivery paused: {pause.reason}")
            try:
                return call()
            except DatadogRateLimitedError as exc:
                wait_for = exc.retry_after
                if wait_for is None or wait_for > longest or self._stopping.is_set():
                    raise
                self._stopping.wait(wait_for)

    def _backoff(self, attempts: int) -> float:
        delay = min(
            self.settings.delivery_backoff_max,
            self.settings.delivery_backoff_base * 2 ** max(attempts - 1, 0),
        )
        return random.uniform(delay / 2, delay)

    # -- rejected credentials ---------------------------------------------------

    def _pause_for(self, exc: DatadogAuthError) -> float:
        """Pause delivery (if not paused already); returns when the keys are probed next."""
        with self._lock:
            if self.pause is None:
                delay = min(5.0, self.settings.auth_probe_max)
                self.pause = Pause(exc.message, self.clock() + delay, delay)
                first = True
            else:
                first = False
            probe_at = self.pause.probe_at
        if first:
            log.error(
                "Datadog rejected the credentials; delivery paused",
                extra={"fields": {"worker": self.name, "status": exc.http_status, "error": exc.message}},
            )
            self.store.set_state(CREDENTIALS_STATE, f"rejected: {exc.message}")
            metrics.PAUSED.set(1)
        return probe_at

    def _probe(self) -> None:
        assert self.pause is not None
        try:
            self.client.check_credentials()
        except DatadogAuthError as exc:
            pause = self.pause
            pause.delay = min(pause.delay * 2, self.settings.auth_probe_max)
            pause.probe_at = self.clock() + pause.delay
            pause.reason = exc.message
            log.warning(
                "Datadog still rejects the credentials",
                extra={
                    "fields": {"worker": self.name, "status": exc.http_status, "next_probe_in": round(pause.delay, 1)}
                },
            )
            return
        except (DatadogUnavailableError, DatadogRateLimitedError, DatadogRejectedError) as exc:
            self.pause.probe_at = self.clock() + self.pause.delay
            log.warning("credential probe failed", extra={"fields": {"worker": self.name, "error": exc.message}})
            return
        self._resume()

    def _resume(self) -> None:
        with self._lock:
            was_paused = self.pause is not None
            self.pause = None
        self.store.set_state(CREDENTIALS_STATE, None)
        metrics.PAUSED.set(0)
        if was_paused:
            log.info("Datadog accepts the credentials again; delivery resumed", extra={"fields": {"worker": self.name}})
        self._wake.set()

    def _credentials_work(self) -> None:
        if self.pause is not None:
            self._resume()

    def _check_recorded_rejection(self) -> None:
        """After a restart, probe keys that were rejected before, so readiness clears by itself."""
        try:
            recorded = self.store.get_state(CREDENTIALS_STATE)
        except StoreUnavailableError:
            return
        if recorded:
            self.pause = Pause(recorded, self.clock(), 1.0)
