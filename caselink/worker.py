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
from concurrent.futures import wait
from dataclasses import dataclass
from dataclasses import field
from typing import TypeVar

from caselink import logs
from caselink import metrics
from caselink.config import Settings
from caselink.datadog import CASE
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
# Outcomes that leave a link final: nothing more to do for it.
FINAL = ("created", "existing", "merged", "dead")
# Why a pass left links undelivered, most telling first.
REASONS = ("keys rejected", "rate limited", "Datadog unavailable", "store unavailable", "error", "stopped")


_REASON_OF = {
    "paused": "keys rejected",
    "rate_limited": "rate limited",
    "retry": "Datadog unavailable",
    "store_unavailable": "store unavailable",
    "released": "stopped",
}


class _StoppingError(Exception):
    """The worker is stopping: a delivery starts no more calls and goes back to the queue."""


@dataclass(frozen=True)
class Delivery:
    """What one delivery came to: its outcome, and for a link that went back, why and until when."""

    outcome: str
    error: str | None = None
    retry_at: float | None = None


@dataclass
class PassReport:
    """What `run_once` left undelivered and why (`reasons`: kind -> what was said, when it may go on)."""

    tried: int = 0
    delivered: int = 0
    dead: int = 0
    reasons: dict[str, tuple[str, float | None]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every link that was due is delivered or final."""
        return not self.reasons

    def note(self, reason: str, said: str, until: float | None = None, *, first: bool = True) -> None:
        """Add a reason; the first words said for it stay unless `first` is false."""
        known = self.reasons.get(reason)
        if known is not None:
            said = known[0] if first else said
            # The earliest moment delivery may go on is what an operator waits for.
            if known[1] is not None and (until is None or known[1] <= until):
                until = known[1]
        self.reasons[reason] = (said, until)

    def why(self) -> str:
        """The reasons in one line: 'rate limited until 00:41:07 UTC (…); Datadog unavailable (…)'."""
        parts = []
        for reason in REASONS:
            if reason not in self.reasons:
                continue
            said, until = self.reasons[reason]
            if reason == "keys rejected":
                parts.append(f"Datadog rejects the keys (DD_API_KEY, DD_APP_KEY): {said}")
            elif reason == "rate limited" and until is not None:
                moment = time.strftime("%H:%M:%S", time.gmtime(until))
                parts.append(f"rate limited until {moment} UTC ({said})")
            elif reason == "error":
                parts.append(f"delivery failed unexpectedly ({said})")
            else:
                parts.append(f"{reason} ({said})")
        return "; ".join(parts)


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
        self._running: dict[Future[Delivery], Job] = {}
        # Link id -> (endpoint, monotonic start) of the call each delivery has in flight.
        self._calls: dict[int, tuple[str, float]] = {}
        self._hurry = threading.Event()
        # True when the last claim found less than it had room for.
        self._idle = False
        # Whether a first attempt may wait for its case's next listing (DD_LINK_LIST_INTERVAL): in the
        # loop, which claims it again when due, not in a pass (`--once`), which tries each link once.
        self._postponing = False
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

    def stop(self, grace: float = 5.0) -> None:
        """Stop claiming; give calls in flight `grace` seconds to answer, then release every link still held.

        A delivery between calls stops before its next one. A link whose call
        is still unanswered goes back to the queue: due at once if that call was
        a read, and if it was the POST (which may yet take effect in Datadog)
        due when that POST would have timed out, and then checked before it is
        posted again, as after any ambiguous failure. The threads of abandoned
        calls are daemons: they do not hold the process up.
        """
        self.stop_soon()
        deadline = time.monotonic() + grace
        if self._thread is not None:
            self._thread.join(grace)
        while not self._hurry.is_set():
            with self._lock:
                running = [future for future in self._running if not future.done()]
            left = deadline - time.monotonic()
            if not running or left <= 0:
                break
            wait(running, timeout=min(left, 0.1))
        with self._lock:
            unfinished = [(job, self._calls.get(job.id)) for future, job in self._running.items() if not future.done()]
        for job, call in unfinished:
            try:
                self._release(job, call)
            except CaselinkError:
                pass
        log.info("worker stopped", extra={"fields": {"worker": self.name, "released": len(unfinished)}})

    def hurry(self) -> None:
        """Stop waiting for calls in flight (a second SIGTERM/SIGINT): release their links now."""
        self._hurry.set()
        self.stop_soon()

    def _release(self, job: Job, call: tuple[str, float] | None) -> None:
        if call is not None and call[0] == CREATE_LINK:
            endpoint, started = call
            waited = time.monotonic() - started
            # As if the POST had timed out: its answer is no longer awaited, and it may have made the link.
            unanswered_until = max(self.client.timeout[1] - waited, 0.0)
            self.store.retry_later(
                job,
                f"released at shutdown with {endpoint} unanswered after {waited:.1f}s; "
                "Datadog is asked whether the link exists before it is posted again",
                at=self.clock() + unanswered_until + self._backoff(job.attempts),
            )
            return
        # No POST of this attempt is on its way: due at once. The error recorded makes the next
        # attempt list the case's links anew rather than trust a recent listing.
        self.store.retry_later(job, "released at shutdown", at=self.clock(), count_attempt=False)

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
        self._postponing = True
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
            self._submit(job)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._wake.wait(seconds)

    def _reap(self) -> None:
        with self._lock:
            for future in [future for future in self._running if future.done()]:
                del self._running[future]

    def _submit(self, job: Job) -> Future[Delivery]:
        """Deliver `job` on a thread of its own.

        A daemon thread, not a ThreadPoolExecutor's: at exit Python joins an
        executor's threads, so a call that Datadog holds would hold a stopping
        process up until its timeout, long after its link was released.
        """
        future: Future[Delivery] = Future()
        with self._lock:
            self._running[future] = job

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(self.deliver(job))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(exc)

        threading.Thread(target=run, name=f"caselink-delivery-{job.id}", daemon=True).start()
        return future

    def run_once(self, timeout: float | None = None) -> PassReport:
        """Try each link that is due now once, respecting pauses, then return what is left and why.

        The pass (`flask worker --once`) ends when nothing due at its start is
        left to try, and early when delivery cannot go on: Datadog rejects the
        keys, a rate limit holds every call back for longer than a delivery
        waits in place, or a whole round of deliveries went back to the queue
        (Datadog unavailable or limiting). A link that goes back is not tried
        again in the same pass, so no answer can keep the pass going.
        """
        report = PassReport()
        started = self.clock()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._stopping.is_set():
                report.note("stopped", "asked to stop")
                break
            if self.pause is not None:
                # What Datadog answered, not "delivery paused" as the deliveries after it were told.
                report.note("keys rejected", self.pause.reason, first=False)
                break
            if deadline is not None and time.monotonic() >= deadline:
                report.note("stopped", f"the pass ran out of its {timeout:g}s")
                break
            held_back = max(self.client.limiter.wait_time(LIST_LINKS, CREATE_LINK), self.client.failure_wait())
            if held_back > self._longest_wait():
                report.note("rate limited", "Datadog's rate limit is spent", self.clock() + held_back)
                break
            if held_back > 0:
                self._stopping.wait(held_back)
                continue
            jobs = self.store.claim(
                self.name,
                self.settings.worker_concurrency,
                self.settings.delivery_lease,
                now=self.clock(),
                due_by=started,
            )
            if not jobs:
                break
            futures = [self._submit(job) for job in jobs]
            unfinished = set(futures)
            while unfinished and not self._stopping.is_set():
                # In slices: a stop must not wait here for a call Datadog holds (stop() releases its link).
                _, unfinished = wait(unfinished, timeout=0.2)
            self._reap()
            if unfinished:
                report.note("stopped", "asked to stop")
            progressed = False
            for future in futures:
                if not future.done():
                    continue
                result = future.result()
                report.tried += 1
                if result.outcome in FINAL:
                    progressed = True
                    report.dead += result.outcome == "dead"
                    report.delivered += result.outcome != "dead"
                elif result.outcome != "lease_lost":
                    reason = _REASON_OF.get(result.outcome, "error")
                    report.note(reason, result.error or result.outcome, result.retry_at)
            # Read anew (not narrowed from the check above): a delivery of this round may have paused.
            pause = self._current_pause()
            if pause is not None:
                report.note("keys rejected", pause.reason, first=False)
                break
            if not progressed:
                # Nothing got through this round: the next would fare no better now.
                break
        return report

    def run_until_idle(self, timeout: float = 30.0) -> PassReport:
        """`run_once` for tests: deliver what is due now, within `timeout`."""
        return self.run_once(timeout)

    # -- one delivery -------------------------------------------------------

    def deliver(self, job: Job) -> Delivery:
        started = time.monotonic()
        outcome, status, error, failure = "created", None, None, None
        retry_at: float | None = None
        try:
            try:
                outcome = self._deliver(job)
            except _StoppingError:
                outcome, error, retry_at = "released", "released at shutdown", self.clock()
                # No call of this attempt is in flight: due at once, and listed anew (see _release).
                self.store.retry_later(job, error, at=retry_at, count_attempt=False)
            except DatadogAuthError as exc:
                outcome, status, error = "paused", exc.http_status, exc.message
                # Due when the keys are next probed, not now: a link due now would be claimed straight back.
                retry_at = self._pause_for(exc)
                self.store.retry_later(job, exc.message, at=retry_at, status=exc.http_status, count_attempt=False)
            except DatadogRateLimitedError as exc:
                outcome, status, error = "rate_limited", exc.http_status, exc.message
                retry_after = exc.retry_after if exc.retry_after is not None else self._backoff(job.attempts)
                retry_at = self.clock() + retry_after
                self.store.retry_later(job, exc.message, at=retry_at, status=exc.http_status, count_attempt=False)
            except DatadogUnavailableError as exc:
                status, error, failure = exc.http_status, exc.message, exc.failure
                if job.attempts >= self.settings.delivery_max_attempts:
                    outcome = "dead"
                    self.store.dead(job, f"gave up after {job.attempts} attempts: {exc.message}", status=status)
                else:
                    outcome, retry_at = "retry", self.clock() + self._backoff(job.attempts)
                    self.store.retry_later(job, exc.message, at=retry_at, status=status)
            except DatadogRejectedError as exc:
                outcome, status, error = "dead", exc.http_status, exc.message
                self.store.dead(job, exc.message, status=status)
        except StoreUnavailableError as exc:
            # The lease runs out and another worker (or this one) takes the link again.
            outcome, error, retry_at = "store_unavailable", exc.message, None
        except Exception as exc:
            outcome, error = "error", f"{type(exc).__name__}: {exc}"
            log.exception("delivery failed unexpectedly", extra={"fields": {"link": job.id}})
            retry_at = self.clock() + self._backoff(job.attempts)
            try:
                self.store.retry_later(job, error, at=retry_at)
            except CaselinkError:
                pass
        duration = time.monotonic() - started
        metrics.DELIVERIES.labels(outcome=outcome).inc()
        if outcome != "postponed":  # not an attempt: no call was made
            metrics.DELIVERY_SECONDS.observe(duration)
        fields: dict[str, object] = {
            "worker": self.name,
            "link": job.id,
            "planned": str(job),
            "attempt": job.attempts,
            "outcome": outcome,
            "duration_ms": round(duration * 1000, 1),
        }
        if status is not None:
            fields["status"] = status
        if failure is not None:
            fields["failure"] = failure
        if error is not None:
            fields["error"] = error
        level = 40 if outcome in ("dead", "error") else 30 if outcome in ("paused", "retry", "released") else 20
        log.log(level, "delivery", extra={"fields": fields})
        return Delivery(outcome, error, retry_at)

    def _deliver(self, job: Job) -> str:
        parent_id = job.parent_id or self._within_budget(job, CASE, lambda: self.client.case_id(job.parent.id))
        child_id = job.child_id or self._within_budget(job, CASE, lambda: self.client.case_id(job.child.id))
        link = ResolvedLink(job.parent.type, parent_id, job.relationship, job.child.type, child_id)
        if self._postponing and job.first_attempt and job.due_at is not None:
            # Its case was listed a moment ago, before this link was planned: rather than a listing
            # for each link that comes, the links planned meanwhile wait for one that serves them all.
            # Asked before `prepare`, whose write a link put back straight away does not need.
            listing_at = self.client.next_listing_at(link, planned_at=job.due_at)
            if listing_at is not None and listing_at > self.clock():
                return "postponed" if self.store.postpone(job, at=listing_at, now=self.clock()) else "lease_lost"
        held, twin = self.store.prepare(job, parent_id, child_id, lease=self.settings.delivery_lease, now=self.clock())
        if twin is not None:
            return "merged"
        if not held:
            return "lease_lost"
        # A first attempt may use a listing of the case that other deliveries made a
        # moment ago, if it was made after this link was planned: an older one may miss a
        # link made by hand before the webhook came. After any earlier attempt (a timeout,
        # a 5xx, a lease that ran out) the POST may have taken effect: Datadog is asked now.
        since = job.due_at if job.first_attempt else None
        existing = self._within_budget(job, LIST_LINKS, lambda: self.client.find_link(link, listed_since=since))
        self._credentials_work()
        if existing is not None:
            self.store.delivered(job, existing, existed=True, now=self.clock())
            return "existing"
        link_id = self._within_budget(job, CREATE_LINK, lambda: self.client.create_link(link))
        if not self.store.delivered(job, link_id, existed=False, now=self.clock()):
            return "lease_lost"
        return "created"

    def _within_budget(self, job: Job, endpoint: str, call: Callable[[], T]) -> T:
        """Make a call, waiting here for a rate limit that resets soon rather than re-queueing.

        Waiting in place keeps a claimed, half-done delivery moving the moment the
        budget returns; a long wait (or a stop) goes back to the queue instead.
        The call is noted as in flight, so that a stop knows whether the link it
        releases may have a POST on its way; once stopping, no call starts.
        """
        while True:
            pause = self.pause
            if pause is not None:
                # Another delivery found the keys rejected: send nothing more until the probe.
                raise DatadogAuthError(f"delivery paused: {pause.reason}")
            with self._lock:
                # Checked under the lock stop() reads the calls in flight with: none starts after.
                if self._stopping.is_set():
                    raise _StoppingError
                self._calls[job.id] = (endpoint, time.monotonic())
            try:
                return call()
            except DatadogRateLimitedError as exc:
                wait_for = exc.retry_after
                if wait_for is None or wait_for > self._longest_wait() or self._stopping.is_set():
                    raise
                self._stopping.wait(wait_for)
            finally:
                with self._lock:
                    self._calls.pop(job.id, None)

    def _longest_wait(self) -> float:
        """The longest a delivery waits in place for a rate limit rather than going back to the queue."""
        return min(10.0, self.settings.delivery_lease / 4)

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

    def _current_pause(self) -> Pause | None:
        with self._lock:
            return self.pause

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
