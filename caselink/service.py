"""The ingest path, step by step: handler → events → rules → store, and readiness.

`Service` holds what a process shares between requests (settings, store,
rules in force, handler registry, the optional in-process worker); it lives
in `app.extensions["caselink"]`.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from typing import Any

from caselink import logs
from caselink import metrics
from caselink.auth import AuthPolicy
from caselink.config import Settings
from caselink.datadog import DatadogClient
from caselink.errors import BadRequestError
from caselink.errors import CaselinkError
from caselink.errors import ConflictError
from caselink.errors import NotFoundError
from caselink.errors import NotReadyError
from caselink.errors import UnsupportedMediaTypeError
from caselink.events import Event
from caselink.events import Headers
from caselink.events import WebhookRequest
from caselink.housekeeping import Housekeeper
from caselink.normalise import rejected
from caselink.normalise import unrecognised
from caselink.regex import NOT_SEARCHED
from caselink.regex import SEARCH_SECONDS_PER_WEBHOOK
from caselink.regex import search_budget
from caselink.rules import Evaluation
from caselink.rules import Example
from caselink.rules import LiveRules
from caselink.rules import PlannedLink
from caselink.rules import Rule
from caselink.rules import RuleSet
from caselink.rules import did_you_mean
from caselink.rules import load_rules
from caselink.store import RecordedEvent
from caselink.store import RuleStats
from caselink.store import Store
from caselink.traces import event_from_row
from caselink.worker import CREDENTIALS_STATE
from caselink.worker import DeliveryWorker

log = logs.get("ingest")

# The window `rules stats` and the status page's Rules page count recent matches in.
RULE_STATS_WINDOW = timedelta(days=30)


@dataclass(frozen=True)
class IngestResult:
    """The answer to a webhook: 202 when something new was stored, 200 for a repeat."""

    status: int
    events: list[dict[str, Any]]
    links_planned: int

    def body(self) -> dict[str, Any]:
        return {"events": self.events, "links_planned": self.links_planned}


@dataclass(frozen=True)
class ExampleResult:
    """One example of one rule, run: the links it expects and those the rules planned."""

    rule: str
    index: int
    line: int
    expected: list[PlannedLink]
    planned: list[PlannedLink]
    notes: list[str]
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and sorted(map(str, self.planned)) == sorted(map(str, self.expected))

    @property
    def missing(self) -> list[PlannedLink]:
        return [link for link in self.expected if link not in self.planned]

    @property
    def unexpected(self) -> list[PlannedLink]:
        return [link for link in self.planned if link not in self.expected]


@dataclass(frozen=True)
class RuleReport:
    """One rule in force: what it did over all time and in a recent window, and its examples, run."""

    rule: Rule
    all_time: RuleStats
    window: RuleStats
    examples: list[ExampleResult] = field(default_factory=list)

    @property
    def failing_examples(self) -> list[ExampleResult]:
        return [result for result in self.examples if not result.passed]

    def flags(self, window: str) -> list[str]:
        """What an operator should look at: an enabled rule with no match in `window` (a label such
        as "30d"), a disabled rule, examples that fail."""
        flags = []
        if self.rule.enabled and self.window.matched == 0:
            flags.append(f"no match in {window}")
        if not self.rule.enabled:
            flags.append("disabled")
        if self.failing_examples:
            flags.append(f"{len(self.failing_examples)} example(s) fail")
        return flags


@dataclass(frozen=True)
class RuleReports:
    """Every rule in force, in file order, and the rules counted in the store but no longer in force."""

    rules: list[RuleReport]
    retired: list[str]
    since: datetime


@dataclass
class Service:
    settings: Settings
    store: Store
    rules: LiveRules
    handlers: Mapping[str, Any]
    client: DatadogClient | None = None
    worker: DeliveryWorker | None = None
    housekeeper: Housekeeper | None = None

    # -- webhooks -------------------------------------------------------------

    def handler(self, source: str) -> Any:
        handler = self.handlers.get(source)
        if handler is None:
            raise NotFoundError(
                f"no webhook source named {source!r}{did_you_mean(source, self.handlers)}; "
                f"sources: {', '.join(sorted(self.handlers))}"
            )
        return handler

    def auth_policy(self, source: str, now: float) -> AuthPolicy:
        return AuthPolicy(
            source=source,
            secrets=self.settings.secrets_for(source),
            open_without_secret=self.settings.dry_run,
            tolerance=self.settings.signature_tolerance,
            now=now,
            grafana_signature_header=self.settings.grafana_signature_header,
            grafana_timestamp_header=self.settings.grafana_timestamp_header,
        )

    def events_from(self, request: WebhookRequest, *, authenticate: bool = True) -> list[Event]:
        """Authenticate, parse and normalise one request into events."""
        handler = self.handler(request.source)
        if authenticate:
            handler.authenticate(request, self.auth_policy(request.source, request.received_at))
        payload = handler.parse(request)
        try:
            return list(handler.normalise(payload, request))
        except CaselinkError:
            raise
        except Exception as exc:
            # The sender did nothing wrong; keep what it sent so nothing is lost.
            log.exception("handler could not normalise a payload", extra={"fields": {"source": request.source}})
            problem = f"the {request.source} handler failed: {type(exc).__name__}: {exc}"
            return [unrecognised(request.source, payload, request, problem)]

    def ruleset(self) -> RuleSet:
        ruleset = self.rules.current()
        if ruleset is None:
            error = self.rules.error.problems[0] if self.rules.error else "no rules loaded"
            raise NotReadyError(f"no valid rules are loaded ({error}); fix the rules file")
        return ruleset

    def ingest(self, request: WebhookRequest) -> IngestResult:
        """The whole webhook path; the answer never waits on Datadog.

        A body that authenticates but cannot be read (400, 415) is refused all
        the same, and kept as an event of kind `rejected` so the operator sees
        that a template is broken; an unauthenticated body is never stored.
        """
        handler = self.handler(request.source)
        handler.authenticate(request, self.auth_policy(request.source, request.received_at))
        try:
            return self._ingest(request)
        except (BadRequestError, UnsupportedMediaTypeError) as exc:
            raise self._keep_rejected(request, exc) from None

    def _ingest(self, request: WebhookRequest) -> IngestResult:
        events = self.events_from(request, authenticate=False)
        ruleset = self.ruleset()
        evaluated = list(zip(events, ruleset.evaluate_webhook(events), strict=True))
        if not evaluated:
            return IngestResult(200, [], 0)
        recorded = self.store.record(
            evaluated, ruleset=ruleset.digest, dry_run=self.settings.dry_run, now=request.received_at
        )
        deferred = 0
        for (event, evaluation), stored in zip(evaluated, recorded, strict=True):
            # Per-rule counts are not taken here: housekeeping counts them from the stored traces.
            metrics.TALLY.count(metrics.EVENTS, event.source, "duplicate" if stored.duplicate else "new")
            if stored.dedup_conflict and not stored.duplicate:
                metrics.TALLY.count(metrics.DEDUP_CONFLICTS, event.source)
            if evaluation.deferred and not stored.duplicate:
                metrics.TALLY.count(metrics.DEFERRED, event.source)
                deferred += 1
        if deferred:
            if self.housekeeper is not None:
                self.housekeeper.wake()  # this process evaluates them: at once, not at its next round
            log.warning(
                "evaluation deferred",
                extra={"fields": {"source": request.source, "events": len(evaluated), "deferred": deferred}},
            )
        duplicate = all(stored.duplicate for stored in recorded)
        return IngestResult(
            200 if duplicate else 202,
            [_answer(stored, evaluation.deferred) for (_, evaluation), stored in zip(evaluated, recorded, strict=True)],
            # Distinct over the request: events of one delivery planning the same link plan one.
            len(
                {
                    link
                    for (_, evaluation), stored in zip(evaluated, recorded, strict=True)
                    if not stored.duplicate
                    for link in evaluation.links
                }
            ),
        )

    def _keep_rejected(self, request: WebhookRequest, exc: CaselinkError) -> CaselinkError:
        """Store an authenticated body caselink refused, with the reason; return the error to answer."""
        reason = exc.detail.get("reason", exc.code)
        ruleset = self.rules.current()
        stored = self.store.record(
            [(rejected(request, exc.message, self.settings.max_body_bytes), Evaluation([]))],
            ruleset=ruleset.digest if ruleset is not None else "",
            dry_run=self.settings.dry_run,
            now=request.received_at,
        )[0]
        metrics.TALLY.count(metrics.REJECTED, request.source, reason)
        error = copy.copy(exc)
        error.detail = {**exc.detail, "rejected_event": stored.id}
        return error

    def test_examples(self, ruleset: RuleSet) -> list[ExampleResult]:
        """Run every rule's examples through its handler and the rules, as `rules test` does."""
        results = []
        for rule in ruleset.rules:
            # A switched-off rule's examples still say what it does when switched on.
            trial = (
                ruleset
                if rule.enabled
                else replace(
                    ruleset,
                    rules=tuple(replace(other, enabled=True) if other is rule else other for other in ruleset.rules),
                )
            )
            for index, example in enumerate(rule.examples):
                results.append(self._test_example(trial, rule.name, index, example))
        return results

    def rule_reports(self, ruleset: RuleSet, window: timedelta = RULE_STATS_WINDOW) -> RuleReports:
        """Each rule's statistics (Store.rule_stats: all time, and from `window` ago) and examples."""
        since = datetime.now(UTC) - window
        ever, recent = self.store.rule_stats(), self.store.rule_stats(since)
        examples: dict[str, list[ExampleResult]] = {}
        for result in self.test_examples(ruleset):
            examples.setdefault(result.rule, []).append(result)
        reports = [
            RuleReport(
                rule,
                ever.get(rule.name) or RuleStats(rule.name, 0, 0, 0, None),
                recent.get(rule.name) or RuleStats(rule.name, 0, 0, 0, None),
                examples.get(rule.name, []),
            )
            for rule in ruleset.rules
        ]
        return RuleReports(reports, sorted(set(ever) - {rule.name for rule in ruleset.rules}), since)

    def _test_example(self, trial: RuleSet, rule: str, index: int, example: Example) -> ExampleResult:
        body = json.dumps(example.payload).encode()
        request = WebhookRequest(
            example.source, body, Headers({"Content-Type": "application/json"}), "application/json", time.time()
        )
        expected = list(example.links)
        try:
            events = self.events_from(request, authenticate=False)
        except CaselinkError as exc:
            return ExampleResult(rule, index, example.line, expected, [], [], error=exc.message)
        planned: list[PlannedLink] = []
        notes: list[str] = []
        for event in events:
            for outcome in trial.evaluate(event).outcomes:
                if outcome.rule != rule:
                    continue
                planned.extend(link for link in outcome.links if link not in planned)
                if outcome.outcome != "matched":
                    notes.append(f"{outcome.outcome}: {outcome.reason}")
                notes.extend(outcome.problems)
        unsearched = next((note for note in notes if NOT_SEARCHED in note), None)
        if unsearched is not None:
            # Its answer would be a guess: a search it needed did not run, whatever the links say.
            error = f"undecided: {unsearched.split(NOT_SEARCHED, 1)[1]}; a search it needs was not run"
            return ExampleResult(rule, index, example.line, expected, planned, notes, error=error)
        return ExampleResult(rule, index, example.line, expected, planned, notes)

    # -- health -----------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {}
        ready = True
        try:
            self.store.check_schema()
            # Reads can work while no write commits (a full disk, read-only files).
            self.store.check_writable()
            checks["store"] = "ok"
        except CaselinkError as exc:
            checks["store"] = exc.message
            ready = False
        ruleset = self.rules.current()
        if ruleset is None:
            checks["rules"] = "not loaded: " + (self.rules.error.problems[0] if self.rules.error else "unknown")
            ready = False
        elif self.rules.loading:
            # Before the error: while a newer file loads, the error is the previous file's.
            checks["rules"] = (
                f"{len(ruleset.rules)} rules in force; the file on disk is not the file in force: it is being loaded"
            )
        elif self.rules.error is not None:
            checks["rules"] = (
                f"{len(ruleset.rules)} rules in force; the file on disk has errors and was not loaded: "
                + self.rules.error.problems[0]
            )
        elif not self.rules.file_in_force():
            checks["rules"] = (
                f"{len(ruleset.rules)} rules in force; the file on disk is not the file in force: "
                "it changed and is read at the next check"
            )
        else:
            checks["rules"] = f"{len(ruleset.rules)} rules loaded"
        if self.settings.dry_run:
            checks["datadog"] = f"dry-run ({self.settings.dry_run_reason})"
        elif checks["store"] == "ok":
            rejected = self.store.get_state(CREDENTIALS_STATE)
            if rejected:
                checks["datadog"] = f"credentials {rejected}"
                ready = False
            else:
                checks["datadog"] = "credentials not known to be rejected"
        return ready, checks

    # -- operators ----------------------------------------------------------------

    def retry_link(self, link_id: int) -> dict[str, Any]:
        """Send a dead or dry-run link again; a dry-run link cannot be sent while caselink runs in dry-run.

        Raises NotFoundError, or ConflictError (and changes nothing) for a link
        that cannot be retried now.
        """
        if self.settings.dry_run and self.store.get_link(link_id)["state"] == "dry_run":
            raise ConflictError(
                f"link {link_id} was planned in dry-run and cannot be sent until {self._live_when()} "
                f"(caselink runs in dry-run: {self.settings.dry_run_reason}); nothing was changed"
            )
        return self.store.retry(link_id)

    def retry_dead(self) -> int:
        """Send every dead link again; how many. In dry-run nothing can be sent, so this
        raises ConflictError and changes nothing (they would wait as pending for good)."""
        if self.settings.dry_run:
            raise ConflictError(
                f"dead links cannot be sent until {self._live_when()} "
                f"(caselink runs in dry-run: {self.settings.dry_run_reason}); nothing was changed"
            )
        return self.store.retry_dead()

    def _live_when(self) -> str:
        return "DRY_RUN is unset" if self.settings.dry_run_requested else "DD_API_KEY and DD_APP_KEY are set"

    def rule_totals(self) -> dict[str, tuple[int, int]]:
        """Events matched and links planned, all time, by each rule in force (for /metrics)."""
        ruleset = self.rules.current()
        if ruleset is None:
            return {}
        stats = self.store.rule_stats(None)
        totals = {}
        for rule in ruleset.rules:
            counted = stats.get(rule.name)
            totals[rule.name] = (counted.matched, counted.links_planned) if counted else (0, 0)
        return totals

    # -- background work ------------------------------------------------------

    def evaluate_deferred(self, limit: int = 20) -> int:
        """Evaluate up to `limit` stored events whose webhook deferred their evaluation, with the
        rules in force, and plan their links; return how many were taken (0 while no rules are
        loaded: they wait). Each event has the searches of a webhook of its own."""
        ruleset = self.rules.current()
        if ruleset is None:
            return 0
        rows = self.store.deferred_events(limit)
        settled = []
        for row in rows:
            event = event_from_row(row)
            # No deadline here: beside delivery an event takes what it takes (its searches are
            # bounded all the same), and housekeeping gives way to webhooks between batches.
            with search_budget(SEARCH_SECONDS_PER_WEBHOOK):
                evaluation = ruleset.evaluate(event)
            settled.append((row["id"], event, evaluation))
        self.store.settle_deferred(settled, dry_run=self.settings.dry_run)
        return len(rows)

    def new_worker(self) -> DeliveryWorker:
        if self.client is None:
            raise NotReadyError(f"caselink runs in dry-run ({self.settings.dry_run_reason}); nothing is delivered")
        return DeliveryWorker(self.store, self.client, self.settings)

    def start_worker(self) -> None:
        """Start the in-process delivery worker of a web process and its housekeeping (per-rule
        statistics, retention; in dry-run too), unless told not to."""
        if not self.settings.in_process_worker:
            return
        if self.housekeeper is None:
            self.housekeeper = Housekeeper(
                self.store, self.settings.event_retention, evaluate_deferred=self.evaluate_deferred
            )
            self.housekeeper.start()
        if self.worker is None and self.client is not None:
            self.worker = self.new_worker()
            self.worker.start()

    def stop_worker(self, grace: float = 20.0) -> None:
        if self.housekeeper is not None:
            self.housekeeper.stop()
        if self.worker is not None:
            self.worker.stop(grace)


def _answer(stored: RecordedEvent, deferred: bool = False) -> dict[str, Any]:
    """One event of a webhook's answer; `dedup_conflict` and `evaluation` only where they say
    something, so the usual answer stays short."""
    answer: dict[str, Any] = {
        "id": stored.id,
        "kind": stored.kind,
        "duplicate": stored.duplicate,
        # What this request planned, as the answer's total counts it: a duplicate plans nothing.
        "links_planned": 0 if stored.duplicate else stored.links_planned,
    }
    if stored.dedup_conflict:
        answer["dedup_conflict"] = True
    if deferred and not stored.duplicate:
        # Stored; its rules run beside delivery (Service.evaluate_deferred), and its links are planned then.
        answer["evaluation"] = "deferred"
    return answer


def preflight(settings: Settings, sources: Mapping[str, Any]) -> list[str]:
    """Checks before serving: schema known, rules valid. Returns what to tell the operator."""
    store = Store(settings.database_url, report_unavailable=False)
    try:
        store.check_schema()
    finally:
        store.dispose()
    ruleset = load_rules(settings.rules_file, sources=tuple(sources))
    # The "warning: " prefix makes the start-up log write them at level warning.
    notes = [f"{len(ruleset.rules)} rules loaded from {ruleset.path}", *(f"warning: {w}" for w in ruleset.warnings)]
    if settings.dry_run:
        notes.append(f"dry-run: {settings.dry_run_reason}; links are planned and recorded, never sent to Datadog")
    else:
        notes.append(f"live: links go to {settings.dd_api_display_url}")
    for source in sources:
        if settings.secrets_for(source):
            continue
        variable = f"{source.upper()}_WEBHOOK_SECRET"
        if settings.dry_run:
            notes.append(
                f"warning: /webhooks/{source} accepts unauthenticated requests "
                f"({variable} is not set; allowed only in dry-run)"
            )
        else:
            notes.append(f"/webhooks/{source} refuses every request until {variable} is set")
    for source in settings.webhook_secrets:
        if source not in sources:
            notes.append(
                f"warning: {source.upper()}_WEBHOOK_SECRET names no webhook source{did_you_mean(source, sources)}"
            )
    if settings.admin_token is None:
        notes.append("/api/* is closed: ADMIN_TOKEN is not set")
    return notes
