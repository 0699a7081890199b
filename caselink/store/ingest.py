"""The webhook path's writes: events with their traces and the links they plan, committed in
groups (one transaction for the webhooks that arrive together in a process) through SQL
compiled once, with deduplication by (source, dedup key, content digest) in the INSERT itself.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite

from caselink import jsontext
from caselink import traces
from caselink.errors import BadRequestError
from caselink.errors import CaselinkError
from caselink.errors import StoreUnavailableError
from caselink.events import Event
from caselink.rules import Evaluation
from caselink.rules import RuleSet
from caselink.schema import MAX_KEY
from caselink.schema import events
from caselink.schema import rule_sets
from caselink.store.engine import Database
from caselink.store.engine import RowsStatement
from caselink.store.engine import Statement
from caselink.store.engine import first_line
from caselink.store.engine import is_transient
from caselink.store.queue import NOTIFY_CHANNEL

# The events waiting for their evaluation, oldest first. Its condition is ix_events_deferred's,
# written as it is there: SQLite uses a partial index only for a query that says the same.
DEFERRED_EVENTS = sa.select(events).where(events.c.deferred == sa.true()).order_by(events.c.id)


@dataclass(frozen=True)
class RecordedEvent:
    """What the store did with one event of a webhook."""

    id: int
    kind: str
    duplicate: bool
    links_planned: int
    # A new event whose dedup key an earlier event had with other content.
    dedup_conflict: bool = False


class Ingest(Database):
    """Recording webhooks: events, traces and planned links, a group of webhooks per transaction."""

    def _start(self) -> None:
        super()._start()
        self._statements = _Statements(self.engine.dialect)
        self._group = _GroupCommit(self._write_batch)
        self._known_links = _KnownLinks()
        # The rule sets this process has seen stored: a trace may then refer to them.
        self._stored_rule_sets: set[str] = set()

    def expect_concurrent_writers(self, count: int | Callable[[], int]) -> None:
        """How many requests this process serves at once, or a function that says how many
        now: a transaction that lingers for company commits as soon as that many writes
        have joined. gunicorn.conf.py passes the fewer of its request threads and of the
        connections the process holds."""
        self._group.company = count if callable(count) else lambda: count

    def record(
        self,
        items: Sequence[tuple[Event, Evaluation]],
        *,
        ruleset: str,
        dry_run: bool,
        now: float | None = None,
    ) -> list[RecordedEvent]:
        """Store events, their traces and their planned links; return once committed.

        Webhooks arriving together in one process share a transaction (group
        commit): each request still returns only after the commit that holds
        its rows, so a 202 always means stored.
        """
        now = time.time() if now is None else now
        for _, evaluation in items:
            if evaluation.ruleset is not None:
                if evaluation.ruleset.digest not in self._stored_rule_sets:
                    self._store_rule_set(evaluation.ruleset, now)
                traces.RULE_SETS.use(evaluation.ruleset)
        work = _Work(
            [_event_row(event, evaluation, ruleset, now) for event, evaluation in items],
            [_event_link_rows(evaluation, dry_run, now) for _, evaluation in items],
            now,
        )
        recorded: list[RecordedEvent] = self._group.submit(work)
        return recorded

    def _store_rule_set(self, ruleset: RuleSet, now: float) -> None:
        """Keep the rule set's text before the first trace that refers to it; once per process and rule set."""
        if ruleset.digest and ruleset.text:
            insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
            with self.transaction() as connection:
                connection.execute(
                    insert(rule_sets)
                    .values(digest=ruleset.digest, path=ruleset.path, text=ruleset.text, first_seen_at=now)
                    .on_conflict_do_nothing(index_elements=["digest"])
                )
        self._stored_rule_sets.add(ruleset.digest)

    def _write_batch(self, batch: list[_Work]) -> list[list[RecordedEvent]]:
        unknown = self._unknown_links(batch)
        # Under load, nearly every batch plans only links this process saw committed,
        # so all it writes is one INSERT of events. On SQLite that statement commits
        # by itself: no BEGIN and COMMIT, each a moment in which another thread takes
        # the GIL while this one holds the write lock that the other processes wait for.
        alone = (
            self.dialect == "sqlite"
            and sum(len(work.events) for work in batch) <= _ROWS_PER_INSERT
            and not any(links for of_work in unknown for links in of_work)
        )
        data_error = self.engine.dialect.loaded_dbapi.DataError
        for attempt in range(3):
            try:
                with self._raw_transaction(ingest=True, begin=not alone) as cursor:
                    results, planned, due = self._write(cursor, batch, unknown)
                self._known_links.add(planned, batch[0].now)
                if due:
                    self._wake.send()
                return results
            except (UnicodeError, data_error) as exc:
                # The database refused a value, not the transaction: text it cannot hold
                # (a lone surrogate on SQLite, NUL on PostgreSQL) is the sender's, and
                # _GroupCommit runs each webhook of a batch alone to find whose.
                raise BadRequestError(
                    f"the database cannot store this body: {first_line(exc)}", reason="unstorable"
                ) from exc
            except StoreUnavailableError as exc:
                # Two batches planning the same links in another order can deadlock
                # on PostgreSQL; the database cancels one, which runs again.
                if attempt == 2 or not is_transient(exc.__cause__):
                    raise
        raise AssertionError("unreachable")

    def _unknown_links(self, batch: list[_Work]) -> list[list[list[dict[str, Any]]]]:
        """For each event of the batch, the links it plans that this process has not
        seen committed as they are planned now (the others would change nothing)."""
        known = self._known_links
        now = batch[0].now
        return [
            [
                [link for link in links if not known.covers(_natural_key(link), link["state"] == "pending", now)]
                for links in work.links
            ]
            for work in batch
        ]

    def _write(
        self, cursor: Any, batch: list[_Work], unknown: list[list[list[dict[str, Any]]]]
    ) -> tuple[list[list[RecordedEvent]], list[dict[str, Any]], bool]:
        """Insert a batch's events and, of the links the new ones plan, those in `unknown`;
        return what was recorded, the links planned and whether any delivery became due."""
        stored = iter(self._insert_events(cursor, _mark_conflicts([row for work in batch for row in work.events])))
        results: list[list[RecordedEvent]] = []
        new_links: dict[tuple[str, str, str, str, str], dict[str, Any]] = {}
        for work, unknown_of_work in zip(batch, unknown, strict=True):
            recorded = []
            for row, link_rows in zip(work.events, unknown_of_work, strict=True):
                event_id, duplicate, planned, conflict = next(stored)
                recorded.append(RecordedEvent(event_id, row["kind"], duplicate, planned, conflict and not duplicate))
                if duplicate:
                    continue
                for link in link_rows:
                    natural = _natural_key(link)
                    if natural not in new_links or link["state"] == "pending":
                        new_links[natural] = link
            results.append(recorded)
        planned_links = list(new_links.values())
        due = self._plan_links(cursor, planned_links, batch[0].now) if planned_links else False
        return results, planned_links, due

    def _insert_events(self, cursor: Any, rows: list[dict[str, Any]]) -> list[tuple[int, bool, int, bool]]:
        """Insert the events that are new; for each row, in order, return its event id,
        whether it was stored already, how many links it planned and whether its dedup
        key was stored before with other content.

        One statement inserts a whole batch: a statement per event would be a
        step of the database, and under load a turn at the GIL, for each webhook.
        A row is a repeat only when its key and its digest were both stored; the
        statement itself marks a row whose key was stored with another digest.
        """
        stored: list[tuple[int, bool, int, bool]] = []
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[start : start + _ROWS_PER_INSERT]
            statement = self._statements.insert_events(len(chunk))
            cursor.execute(statement.sql, statement.params_of_rows(chunk))
            stored += self._outcomes(cursor, chunk)
        return stored

    def _outcomes(self, cursor: Any, rows: list[dict[str, Any]]) -> list[tuple[int, bool, int, bool]]:
        """What one INSERT … ON CONFLICT DO NOTHING of several rows did with each of them."""
        # RETURNING names the rows added, and whether each repeats a stored key with other
        # content; on SQLite that costs a step per row added, less than a second statement.
        returned = {
            (source, key, digest): (event_id, bool(conflict))
            for event_id, source, key, digest, conflict in cursor.fetchall()
        }
        if len(returned) == len(rows):
            outcomes = []
            for row in rows:
                event_id, conflict = returned[row["source"], row["dedup_key"], row["digest"]]
                outcomes.append((event_id, False, row["links_planned"], conflict))
            return outcomes
        new_ids = {event_id for event_id, _ in returned.values()}
        # Some rows were stored already, or came twice in this batch.
        sql = self._statements
        outcomes = []
        seen: set[int] = set()
        for row in rows:
            cursor.execute(sql.find_event.sql, sql.find_event.params(row))
            event_id, planned, conflict = cursor.fetchone()
            new = event_id in new_ids and event_id not in seen
            seen.add(event_id)
            outcomes.append((event_id, not new, planned, bool(conflict)))
        return outcomes

    def _plan_links(self, cursor: Any, rows: list[dict[str, Any]], now: float) -> bool:
        """Insert planned links that are new; wake dry-run links that a live rule now asks for.

        Returns whether a delivery became due, so that only then are workers woken:
        most webhooks plan links that already exist.
        """
        sql = self._statements
        live = [row for row in rows if row["state"] == "pending"]
        dormant = [row for row in rows if row["state"] != "pending"]
        if dormant:
            cursor.executemany(sql.insert_link.sql, [sql.insert_link.params(row) for row in dormant])
        if not live:
            return False
        cursor.executemany(sql.insert_link.sql, [sql.insert_link.params(row) for row in live])
        due: bool = cursor.rowcount > 0
        cursor.execute(sql.any_dormant.sql)
        if cursor.fetchone() is not None:
            keys = [dict(row, now=now) for row in live]
            cursor.executemany(sql.promote_planned.sql, [sql.promote_planned.params(row) for row in keys])
            due = due or cursor.rowcount > 0
            resolved = [row for row in keys if row["parent_id"] and row["child_id"]]
            if resolved:
                cursor.executemany(sql.promote_resolved.sql, [sql.promote_resolved.params(row) for row in resolved])
                due = due or cursor.rowcount > 0
        if due and self.dialect == "postgresql":
            # Delivered to listening workers when this transaction commits.
            cursor.execute(sql.notify.sql)
        return due

    def deferred_events(self, limit: int = 50) -> list[dict[str, Any]]:
        """Up to `limit` stored events whose evaluation was deferred (`events.deferred`), oldest
        first, each as the events table keeps it (caselink.traces.event_from_row reads it)."""
        with self.transaction(write=False) as connection:
            return [dict(row._mapping) for row in connection.execute(DEFERRED_EVENTS.limit(limit)).all()]

    def count_deferred(self) -> int:
        """How many stored events wait for their evaluation (through ix_events_deferred)."""
        query = sa.select(sa.func.count()).select_from(DEFERRED_EVENTS.with_only_columns(events.c.id).subquery())
        with self.transaction(write=False) as connection:
            return int(connection.execute(query).scalar() or 0)

    def settle_deferred(self, settled: Sequence[tuple[int, Event, Evaluation]], *, dry_run: bool) -> int:
        """Store deferred events' evaluations, given as (event id, event, evaluation), and plan their
        links, in one transaction; return how many were settled here (not by another process first)."""
        now = time.time()
        for _, _, evaluation in settled:
            if evaluation.ruleset is not None and evaluation.ruleset.digest not in self._stored_rule_sets:
                self._store_rule_set(evaluation.ruleset, now)
        settle = self._statements.settle_deferred
        count = 0
        due = False
        with self._raw_transaction() as cursor:
            for event_id, event, evaluation in settled:
                values = {
                    "id": event_id,
                    "trace": jsontext.dumps(traces.stored_form(event, evaluation)),
                    "links_planned": len(evaluation.links),
                }
                cursor.execute(settle.sql, settle.params(values))
                if cursor.rowcount == 0:
                    continue  # settled by another process
                count += 1
                due = self._plan_links(cursor, _event_link_rows(evaluation, dry_run, now), now) or due
        if due:
            self._wake.send()
        return count

    def add_plans(self, event_id: int, planned: Sequence[tuple[Any, Any]], *, dry_run: bool, note: str) -> None:
        """Plan more links for a stored event (`replay --apply`) and say so in its trace."""
        now = time.time()
        entries: dict[str, dict[str, Any]] = {}
        for outcome, link in planned:
            entry = entries.setdefault(
                outcome.rule, {"rule": outcome.rule, "outcome": "matched", "reason": note, "links": []}
            )
            entry["links"].append(link.as_dict())
        with self.transaction() as connection:
            trace = connection.execute(sa.select(events.c.trace).where(events.c.id == event_id)).scalar_one()
            connection.execute(
                events.update()
                .where(events.c.id == event_id)
                .values(
                    trace=traces.with_added(trace, list(entries.values())),
                    links_planned=events.c.links_planned + len(planned),
                )
            )
        with self._raw_transaction() as cursor:
            rows = [_link_row(link, dry_run or outcome.dry_run, now) for outcome, link in planned]
            due = self._plan_links(cursor, rows, now)
        if due:
            self._wake.send()


@dataclass
class _Work:
    """One webhook's rows, waiting for a transaction."""

    events: list[dict[str, Any]]
    links: list[list[dict[str, Any]]]
    now: float


class _KnownLinks:
    """Links this process has seen committed, so that planning one again skips its INSERT.

    Most webhooks plan a link that already exists (every update of an incident
    names the same case), and that INSERT changes nothing. Links are never
    deleted and never return to dry-run, so "exists" and "exists live" stay
    true; entries expire all the same, so a hand edit of the table is picked up.
    """

    ttl = 60.0
    limit = 10_000

    def __init__(self) -> None:
        self._seen: dict[tuple[str, ...], tuple[float, bool]] = {}

    def covers(self, key: tuple[str, ...], live: bool, now: float) -> bool:
        """Whether planning `key` (live or dry-run) again would change nothing."""
        seen = self._seen.get(key)
        return seen is not None and seen[0] > now and (seen[1] or not live)

    def add(self, rows: list[dict[str, Any]], now: float) -> None:
        if len(self._seen) > self.limit:
            self._seen.clear()
        for row in rows:
            key = _natural_key(row)
            earlier = self._seen.get(key)
            live = row["state"] == "pending" or (earlier is not None and earlier[1])
            self._seen[key] = (now + self.ttl, live)


class _GroupCommit:
    """Runs the writes of concurrent requests in one transaction.

    A request that finds no transaction under way leads: it takes every write
    queued so far (its own included), commits them together, wakes their
    requests, and hands the lead to the oldest write that queued meanwhile.
    Every request waits for exactly one wake-up and for at most one
    transaction ahead of its own.

    While the process is busy (it committed a moment ago), a leader first
    lingers up to `linger` seconds for company, as PostgreSQL's commit_delay
    does: under load, what a transaction costs beyond its rows (the write lock,
    the other processes' changes read back, the commit) is then shared by
    several webhooks instead of paid by each, which is most of what a webhook
    costs (bench/ack_throughput.py). An idle process commits at once, and a
    process whose leaders linger alone three times in a row stops lingering
    for a second. A batch of as many writes as `company()` says the process
    serves at once commits without waiting more.
    """

    linger = 0.002
    busy_within = 0.005

    def __init__(self, run: Callable[[list[_Work]], list[Any]]) -> None:
        self._run = run
        self.company: Callable[[], int] = lambda: 4
        self._enough = 1
        self._queue: list[_Slot] = []
        self._lock = threading.Lock()
        self._joined = threading.Condition(self._lock)
        self._leading = False
        self._lingering = False
        self._last_commit = 0.0
        self._alone_until = 0.0
        self._lonely = 0

    def submit(self, work: _Work) -> Any:
        slot = _Slot(work)
        with self._lock:
            self._queue.append(slot)
            if self._lingering and len(self._queue) >= self._enough:
                # Only a full batch ends the wait early: waking the leader for each
                # arrival cost a context switch per webhook.
                self._joined.notify()
            slot.lead = not self._leading
            if not slot.lead:
                # A lock held until the leader lets it go: the cheapest wait-for-a-signal there is.
                slot.gate = threading.Lock()
                slot.gate.acquire()
            self._leading = True
        if not slot.lead:
            slot.gate.acquire()
        if not slot.done:
            self._wait_for_company()
            self._commit_queued()
        if slot.error is not None:
            if isinstance(slot.error, CaselinkError):
                # Each request raises its own copy: one exception raised in many threads shares a traceback.
                raise copy.copy(slot.error).with_traceback(None)
            raise slot.error
        return slot.result

    def _wait_for_company(self) -> None:
        with self._lock:
            started = time.monotonic()
            self._enough = enough = max(1, self.company())
            if (
                len(self._queue) >= enough
                or started - self._last_commit > self.busy_within
                or started < self._alone_until
            ):
                return
            self._lingering = True
            try:
                while len(self._queue) < enough:
                    remaining = started + self.linger - time.monotonic()
                    if remaining <= 0:
                        break
                    self._joined.wait(remaining)
            finally:
                self._lingering = False
            if len(self._queue) > 1:
                self._lonely = 0
                return
            self._lonely += 1
            if self._lonely >= 3:
                # Nobody came, again and again: this process takes one request at a time.
                self._lonely = 0
                self._alone_until = time.monotonic() + 1.0

    def _commit_queued(self) -> None:
        with self._lock:
            batch, self._queue = self._queue, []
            self._last_commit = time.monotonic()
        try:
            for taken, result in zip(batch, self._run([taken.work for taken in batch]), strict=True):
                taken.result = result
        except StoreUnavailableError as exc:
            # The database, not a webhook: running them one by one would fail alike.
            for taken in batch:
                taken.error = exc
        except Exception as exc:  # noqa: BLE001 - handed to the request it belongs to below
            if len(batch) == 1:
                batch[0].error = exc
            else:
                # One webhook's rows may be what failed (text the database refuses):
                # each runs alone, so that only the webhook at fault fails.
                for taken in batch:
                    try:
                        taken.result = self._run([taken.work])[0]
                    except Exception as own:  # noqa: BLE001 - handed to this request alone
                        taken.error = own
        with self._lock:
            if self._queue:
                self._queue[0].lead = True
                self._queue[0].gate.release()
            else:
                self._leading = False
        for taken in batch:
            taken.done = True
            if not taken.lead:
                taken.gate.release()


@dataclass
class _Slot:
    work: _Work
    lead: bool = False
    done: bool = False
    result: Any = None
    error: Exception | None = None
    gate: Any = None  # a follower's held lock, released to wake it


# Bound values per statement stay far below SQLite's limit of 32766.
_ROWS_PER_INSERT = 500
_EVENT_COLUMNS = (
    "source", "dedup_key", "kind", "entity_type", "entity_id", "title", "message", "severity", "priority",
    "status", "url", "tags", "occurred_at", "payload", "problem", "received_at", "ruleset", "trace", "links_planned",
    "deferred", "digest", "dedup_conflict",
)  # fmt: skip
# What each row of the INSERT binds, in order: its columns, then the key that dedup_conflict looks up.
_EVENT_BINDS = (*((column, column) for column in _EVENT_COLUMNS), ("same_source", "source"), ("same_key", "dedup_key"))
_LINK_COLUMNS = (
    "parent_type", "parent_ref", "relationship", "child_type", "child_ref", "parent_id", "child_id", "state",
    "attempts", "next_attempt_at", "created_at", "updated_at",
)  # fmt: skip
_PLANNED = (
    "parent_type = :parent_type AND parent_ref = :parent_ref AND relationship = :relationship"
    " AND child_type = :child_type AND child_ref = :child_ref"
)
_RESOLVED = (
    "parent_type = :parent_type AND parent_id = :parent_id AND relationship = :relationship"
    " AND child_type = :child_type AND child_id = :child_id"
)


class _Statements:
    def __init__(self, dialect: sa.engine.Dialect) -> None:
        def statement(sql: str) -> Statement:
            return Statement(sql, dialect)

        self._dialect = dialect
        self._insert_events: dict[int, RowsStatement] = {}
        self.find_event = statement(
            "SELECT id, links_planned, dedup_conflict FROM events"
            " WHERE source = :source AND dedup_key = :dedup_key AND digest = :digest"
        )
        # No conflict target: a link already planned, or already resolved to these UUIDs, is left alone.
        self.insert_link = statement(
            f"INSERT INTO links ({', '.join(_LINK_COLUMNS)}) VALUES ({', '.join(':' + c for c in _LINK_COLUMNS)})"  # noqa: S608 - constant column names; values are bound
            " ON CONFLICT DO NOTHING"
        )
        self.settle_deferred = statement(
            "UPDATE events SET trace = :trace, links_planned = :links_planned, deferred = false"
            " WHERE id = :id AND deferred"
        )
        self.any_dormant = statement("SELECT 1 FROM links WHERE state = 'dry_run' LIMIT 1")
        wake = "UPDATE links SET state = 'pending', next_attempt_at = :now, updated_at = :now WHERE state = 'dry_run'"
        self.promote_planned = statement(f"{wake} AND {_PLANNED}")
        self.promote_resolved = statement(f"{wake} AND {_RESOLVED}")
        self.notify = statement(f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')")

    def insert_events(self, count: int) -> RowsStatement:
        """INSERT of `count` events, leaving alone those stored already with the same content.

        A row's dedup_conflict is true when the batch marked it so (its key came
        earlier in the batch with other content) or an event with its key is stored
        with a known digest; one stored before digests (digest '') is no conflict.
        """
        statement = self._insert_events.get(count)
        if statement is None:
            rows = []
            for index in range(count):
                columns = ", ".join(f":{column}_{index}" for column in _EVENT_COLUMNS[:-1])
                # A stored digest '' (an event from before digests) means content unknown: no conflict.
                conflict = (
                    f":dedup_conflict_{index} OR EXISTS (SELECT 1 FROM events"  # noqa: S608 - only bind names
                    f" WHERE source = :same_source_{index} AND dedup_key = :same_key_{index} AND digest <> '')"
                )
                rows.append(f"({columns}, {conflict})")
            values = ", ".join(rows)
            sql = (
                f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) VALUES {values}"  # noqa: S608 - constant column names; values are bound
                " ON CONFLICT (source, dedup_key, digest) DO NOTHING"
                " RETURNING id, source, dedup_key, digest, dedup_conflict"
            )
            statement = self._insert_events[count] = RowsStatement(sql, self._dialect, _EVENT_BINDS)
        return statement


def _event_link_rows(evaluation: Evaluation, dry_run: bool, now: float) -> list[dict[str, Any]]:
    """One row per link an event plans: rules planning the same link plan it once (pending over dry-run)."""
    rows: dict[tuple[str, str, str, str, str], dict[str, Any]] = {}
    for outcome, link in evaluation.planned:
        row = _link_row(link, dry_run or outcome.dry_run, now)
        key = _natural_key(row)
        if key not in rows or row["state"] == "pending":
            rows[key] = row
    return list(rows.values())


def _event_row(event: Event, evaluation: Evaluation, ruleset: str, now: float) -> dict[str, Any]:
    # kind, severity, priority, status and occurred_at fit their columns already (events.CUT_FIELDS).
    payload = jsontext.dumps(event.payload)
    return {
        "source": event.source,
        "dedup_key": _bounded_key(event.dedup_key),
        "kind": event.kind,
        "entity_type": event.entity.type if event.entity else None,
        "entity_id": event.entity.id if event.entity else None,
        "title": event.title,
        "message": event.message,
        "severity": event.severity,
        "priority": event.priority,
        "status": event.status,
        "url": event.url,
        "tags": jsontext.dumps({name: list(values) for name, values in event.tags.items()}),
        "occurred_at": event.occurred_at,
        "payload": payload,
        "problem": event.problem,
        "received_at": now,
        "ruleset": ruleset,
        "trace": jsontext.dumps(traces.stored_form(event, evaluation)),
        "links_planned": len(evaluation.links),
        "deferred": evaluation.deferred,
        # What the event was built from: the payload as stored, unless the handler says otherwise.
        "digest": event.digest or hashlib.sha256(payload.encode()).hexdigest(),
        "dedup_conflict": False,
    }


def _mark_conflicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark the rows whose key came earlier in the same batch with other content.

    The INSERT marks the rows whose key is stored already; a row cannot count
    on seeing one that the same statement adds.
    """
    digests: dict[tuple[str, str], str] = {}
    for row in rows:
        first = digests.setdefault((row["source"], row["dedup_key"]), row["digest"])
        row["dedup_conflict"] = first != row["digest"]
    return rows


def _link_row(link: Any, dry_run: bool, now: float) -> dict[str, Any]:
    return {
        "parent_type": link.parent.type,
        "parent_ref": link.parent.id,
        "relationship": link.relationship,
        "child_type": link.child.type,
        "child_ref": link.child.id,
        "parent_id": link.parent.id if link.parent.is_resolved else None,
        "child_id": link.child.id if link.child.is_resolved else None,
        "state": "dry_run" if dry_run else "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }


def _natural_key(row: dict[str, Any]) -> tuple[str, str, str, str, str]:
    return (row["parent_type"], row["parent_ref"], row["relationship"], row["child_type"], row["child_ref"])


def _bounded_key(key: str) -> str:
    if len(key) <= MAX_KEY:
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()
