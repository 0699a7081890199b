"""The store: events, their evaluation traces, planned links and their delivery state.

SQLAlchemy Core over SQLite (WAL) by default or PostgreSQL. The uniqueness
that makes caselink exactly-once lives in the schema, not in process memory:
an event is unique per (source, dedup key, digest of its content), so only a
repeat with the same content is a duplicate, and a link per (parent,
relationship, child) both as planned and as resolved to UUIDs.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import math
import os
import secrets
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from operator import itemgetter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import QueuePool

from caselink import jsontext
from caselink import logs
from caselink.config import masked_url
from caselink.errors import BadRequestError
from caselink.errors import CaselinkError
from caselink.errors import ConflictError
from caselink.errors import NotFoundError
from caselink.errors import SchemaError
from caselink.errors import StoreUnavailableError
from caselink.events import EntityRef
from caselink.events import Event
from caselink.events import canonical_kind
from caselink.rules import Evaluation
from caselink.schema import LINK_STATES
from caselink.schema import MAX_KEY
from caselink.schema import events
from caselink.schema import links
from caselink.schema import rate_periods
from caselink.schema import rule_links
from caselink.schema import rule_stats
from caselink.schema import service_state

# PostgreSQL channel on which a commit that makes links due wakes idle workers.
NOTIFY_CHANNEL = "caselink_links"
# The service_state row that readiness commits to prove a write can commit.
HEARTBEAT_STATE = "store_heartbeat"
log = logs.get("store")


@dataclass(frozen=True)
class RecordedEvent:
    """What the store did with one event of a webhook."""

    id: int
    kind: str
    duplicate: bool
    links_planned: int
    # A new event whose dedup key an earlier event had with other content.
    dedup_conflict: bool = False


@dataclass(frozen=True)
class RuleStats:
    """What one rule did over a period: events it matched, links it planned and how many of those
    were delivered, and when it last matched (UTC; None if never in the period)."""

    rule: str
    matched: int
    links_planned: int
    links_delivered: int
    last_matched_at: datetime | None


@dataclass(frozen=True)
class PruneBatch:
    """One batch of `prune_events`: events deleted (or that would be, in a dry run), events kept
    because a link of theirs is not final, the last id looked at, whether no older event is left,
    and how long the write transaction took (seconds)."""

    deleted: int
    kept: int
    last_id: int
    done: bool
    write_seconds: float = 0.0


@dataclass(frozen=True)
class Job:
    """A link claimed by one worker until `lease_until`; `token` fences late writers."""

    id: int
    parent: EntityRef
    relationship: str
    child: EntityRef
    parent_id: str | None
    child_id: str | None
    attempts: int
    token: str
    # True when no earlier attempt can have sent this link to Datadog: never
    # claimed before, so no POST of it can have been lost on the way.
    first_attempt: bool = False

    def __str__(self) -> str:
        return f"{self.parent} {self.relationship} {self.child}"


# What became of an event, as `events list --outcome` and the status page's filter select it:
# linked (it planned a link), not-linked (read, but no rule planned a link), unrecognised (a
# payload caselink could not read), duplicate-conflict (its dedup key repeated an earlier event's
# with other content; such an event is also one of the others). A refused webhook stores no event.
EVENT_OUTCOMES = ("linked", "not-linked", "unrecognised", "rejected", "duplicate-conflict")
_OUTCOME_FILTERS = {
    "linked": events.c.links_planned > 0,
    "not-linked": sa.and_(events.c.links_planned == 0, events.c.kind.not_in(("unrecognised", "rejected"))),
    "unrecognised": events.c.kind == "unrecognised",
    "rejected": events.c.kind == "rejected",
    "duplicate-conflict": events.c.dedup_conflict.is_(True),
}
# How many event ids a filtered page looks at below its cursor (see Store.page_events).
EVENT_SEARCH_WINDOW = 10_000


@dataclass(frozen=True)
class EventPage:
    """A page of event summaries; `older` is the cursor of the next page (None: no more).

    `searched_to` is set when a filtered page stopped looking at that id with
    fewer matches than asked for: older events were not looked at yet."""

    events: list[dict[str, Any]]
    older: int | None
    searched_to: int | None


@dataclass(frozen=True)
class LinkPage:
    """A page of link records; `next` is the cursor of the next page (None: no more)."""

    links: list[dict[str, Any]]
    next: str | None


class Store:
    """All reads and writes of caselink's state."""

    def __init__(self, url: str, *, pool_size: int = 5, report_unavailable: bool = True) -> None:
        self.url = url
        # False where the caller tells the operator itself (start-up checks, the command line).
        self.report_unavailable = report_unavailable
        self.dialect = "postgresql" if url.startswith("postgresql") else "sqlite"
        self._write_lock = _WriteLock(url) if self.dialect == "sqlite" else None
        self._file: _DatabaseFile | None = None
        if self.dialect == "sqlite":
            path = _prepare_sqlite_path(url)
            if path is not None:
                # Connections open the file as it is and never create it: a file deleted
                # while caselink runs must not come back empty under the next connection.
                self._file = _DatabaseFile(path)
                uri = f"file:{quote(path)}?mode=rw"
                self.engine: Engine = sa.create_engine(
                    url,
                    creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False),
                    poolclass=QueuePool,
                    pool_size=pool_size,
                    max_overflow=10,
                )
            else:
                self.engine = sa.create_engine(url, pool_size=pool_size, max_overflow=10)
            _configure_sqlite(self.engine)
        else:
            self.engine = sa.create_engine(url, pool_size=pool_size, max_overflow=10, pool_pre_ping=True)
        self._insert = sqlite.insert if self.dialect == "sqlite" else postgresql.insert
        self._statements = _Statements(self.engine.dialect)
        self._group = _GroupCommit(self._write_batch)
        self._wake = _Wakeup(url if self.dialect == "sqlite" else None)
        self._ingest_connection: Any = None
        self._known_links = _KnownLinks()
        self._writable_until = 0.0
        self._reported: dict[str, float] = {}
        self._rule_links_written: set[tuple[str, str, str, str]] = set()

    # -- plumbing ---------------------------------------------------------

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Connection]:
        """One transaction; a database that cannot be reached or written (gone, locked,
        read-only, full, …) becomes StoreUnavailableError, a 503.

        On SQLite, writers queue on a lock file next to the database before
        BEGIN IMMEDIATE, so the kernel wakes the next writer the moment the
        last one commits instead of SQLite polling with sleeps of up to 100 ms.
        """
        guard = self._write_lock if write and self._write_lock is not None else nullcontext()
        try:
            with guard:
                # Reads too: SQLite touching files that turned read-only under it can die of SIGBUS.
                self._check_file()
                with self.engine.connect() as connection:
                    try:
                        if not write:
                            connection = connection.execution_options(caselink_read_only=True)
                        with connection.begin():
                            yield connection
                    except DBAPIError as exc:
                        if _is_unavailable(exc):
                            # A connection SQLite opened read-only stays read-only: never reuse it.
                            connection.invalidate()
                        raise
                if write:
                    self._check_file(committed=True)
        except DBAPIError as exc:
            if not _is_unavailable(exc):
                raise
            raise self._unavailable(exc) from exc

    def _check_file(self, *, committed: bool = False) -> None:
        """Refuse to write (or to count as stored what was just committed) unless the
        SQLite file at the configured path is the one the connections have open and
        can be written; a new file there is opened afresh."""
        if self._file is None:
            return
        try:
            replaced = self._file.check()
        except StoreUnavailableError as exc:
            self._report(exc)
            raise
        if not replaced:
            return
        # Every pooled connection points at the old file: close them all.
        if self._ingest_connection is not None:
            with contextlib.suppress(Exception):
                self._ingest_connection.invalidate()
            self._ingest_connection = None
        self.engine.dispose()
        self._writable_until = 0.0
        error = StoreUnavailableError(
            "the database file was replaced while caselink ran; try again",
            operator=f"{describe_url(self.url)}: the file was replaced while caselink ran; "
            "its connections are opened again on the new file",
        )
        self._report(error)
        if committed:
            # The commit went to the file that was replaced, not to the one now at the path.
            raise error

    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        """The error for a database that cannot be used: a sender's message without host,
        port, database name or path; the operator's with the (password-masked) DATABASE_URL."""
        error = StoreUnavailableError(
            f"the database is unavailable: {_public_reason(exc, self.dialect)}",
            operator=f"{describe_url(self.url)}: {_reason(exc)}",
        )
        self._report(error)
        return error

    def _report(self, error: StoreUnavailableError) -> None:
        """Log why the store is unavailable, each distinct reason at most every 10 s."""
        now = time.monotonic()
        if not self.report_unavailable or now < self._reported.get(error.operator, 0.0):
            return
        if len(self._reported) > 100:
            self._reported.clear()
        self._reported[error.operator] = now + 10.0
        log.error("store unavailable", extra={"fields": {"error": error.operator}})

    def check_writable(self) -> None:
        """Raise StoreUnavailableError unless a write can commit now.

        Commits a one-row heartbeat (at most once a second per process, so
        /readyz stays cheap): a read, or a write rolled back, would pass on a
        full disk or a database that turned read-only.
        """
        if time.monotonic() < self._writable_until:
            return
        if self._file is not None:
            self._file.check_space()
        self.set_state(HEARTBEAT_STATE, str(os.getpid()))
        self._writable_until = time.monotonic() + 1.0

    def dispose(self) -> None:
        if self._ingest_connection is not None:
            self._ingest_connection.close()
            self._ingest_connection = None
        self.engine.dispose()
        if self._write_lock is not None:
            self._write_lock.close()
        self._wake.close()

    def check_schema(self) -> None:
        """Raise SchemaError unless the database is at this release's migration head."""
        from caselink import migrations

        self._check_file()
        try:
            current = migrations.current_revision(self.engine)
        except DBAPIError as exc:
            if not _is_unavailable(exc):
                raise
            raise self._unavailable(exc) from None
        head = migrations.head_revision()
        if current == head:
            return
        if current is None:
            raise SchemaError("the database has no caselink schema; run `bin/caselink db upgrade`")
        if current in migrations.known_revisions():
            raise SchemaError(
                f"the database schema is at revision {current}, this release needs {head}; "
                "run `bin/caselink db upgrade`"
            )
        raise SchemaError(
            f"the database schema is at revision {current}, which this release does not know "
            f"(it knows up to {head}); was it upgraded by a newer release?"
        )

    # -- ingest -------------------------------------------------------------

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
        work = _Work(
            [_event_row(event, evaluation, ruleset, now) for event, evaluation in items],
            [
                [_link_row(link, dry_run or outcome.dry_run, now) for outcome, link in evaluation.planned]
                for _, evaluation in items
            ],
            now,
        )
        recorded: list[RecordedEvent] = self._group.submit(work)
        return recorded

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
                    f"the database cannot store this body: {_first_line(exc)}", reason="unstorable"
                ) from exc
            except StoreUnavailableError as exc:
                # Two batches planning the same links in another order can deadlock
                # on PostgreSQL; the database cancels one, which runs again.
                if attempt == 2 or not _is_transient(exc.__cause__):
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

    @contextmanager
    def _raw_transaction(self, *, ingest: bool = False, begin: bool = True) -> Iterator[Any]:
        """A write transaction on a DBAPI connection, for the statements in `_Statements`.

        Ingest batches run one at a time (see _GroupCommit), so they keep one
        connection for themselves instead of taking one from the pool each time.
        On SQLite, `begin=False` is for a single statement, which is then its own
        transaction.
        """
        dbapi = self.engine.dialect.loaded_dbapi
        guard = self._write_lock if self._write_lock is not None else nullcontext()
        connection = None
        try:
            with guard:
                self._check_file()
                connection = self._ingest_connection if ingest else None
                if connection is None:
                    connection = self.engine.raw_connection()
                cursor = connection.cursor()
                if self.dialect == "sqlite" and begin:
                    cursor.execute("BEGIN IMMEDIATE")
                try:
                    yield cursor
                except BaseException:
                    connection.rollback()
                    raise
                connection.commit()
                self._check_file(committed=True)
        except (dbapi.Error, DBAPIError) as exc:
            if connection is not None:
                # Whatever state it is in, a connection that failed is not used again.
                connection.invalidate()
                connection = None
            if _is_unavailable(exc):
                raise self._unavailable(exc) from exc
            raise
        finally:
            if ingest:
                # Kept unless it failed, or was invalidated because the file was replaced.
                self._ingest_connection = connection if connection is not None and connection.is_valid else None
            elif connection is not None:
                connection.close()

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

    def _notify(self, connection: Connection) -> None:
        """Wake listening workers once this transaction commits (PostgreSQL; see _wake for SQLite)."""
        if self.dialect == "postgresql":
            connection.execute(sa.text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})

    def listen(self, on_notify: Callable[[], None], stop: threading.Event) -> None:
        """Call `on_notify` whenever links become due, until `stop` is set.

        PostgreSQL: LISTEN on its own connection outside the pool, reconnecting
        with backoff if the database goes away and calling `on_notify` after
        reconnecting in case a notification was missed meanwhile. SQLite: the
        datagram socket of `_Wakeup`.
        """
        if self.dialect == "sqlite":
            self._wake.listen(on_notify, stop)
            return
        import psycopg

        url = self.engine.url.set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        delay = 0.5
        while not stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True) as connection:
                    connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    delay = 0.5
                    on_notify()
                    while not stop.is_set():
                        for _ in connection.notifies(timeout=1.0):
                            on_notify()
            except psycopg.Error:
                stop.wait(delay)
                delay = min(delay * 2, 30.0)

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
                .values(trace=[*trace, *entries.values()], links_planned=events.c.links_planned + len(planned))
            )
        with self._raw_transaction() as cursor:
            rows = [_link_row(link, dry_run or outcome.dry_run, now) for outcome, link in planned]
            due = self._plan_links(cursor, rows, now)
        if due:
            self._wake.send()

    # -- delivery -----------------------------------------------------------

    def claim(
        self, worker: str, limit: int, lease: float, now: float | None = None, *, due_by: float | None = None
    ) -> list[Job]:
        """Take up to `limit` due links (or links whose lease ran out) for this worker.

        `due_by` takes only links due by then (a pass that tries each link once: a link
        it put back is due later)."""
        now = time.time() if now is None else now
        due_by = now if due_by is None else min(due_by, now)
        token = f"{worker[:16]}-{secrets.token_hex(6)}"
        due = (
            sa.select(links.c.id)
            .where(
                sa.or_(
                    sa.and_(links.c.state == "pending", links.c.next_attempt_at <= due_by),
                    sa.and_(links.c.state == "claimed", links.c.lease_until < now),
                )
            )
            .order_by(links.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        statement = (
            links.update()
            .where(links.c.id.in_(due.scalar_subquery()))
            .values(
                state="claimed",
                claim_token=token,
                claimed_by=worker[:128],
                lease_until=now + lease,
                attempts=links.c.attempts + 1,
                updated_at=now,
            )
            .returning(
                links.c.id,
                links.c.parent_type,
                links.c.parent_ref,
                links.c.relationship,
                links.c.child_type,
                links.c.child_ref,
                links.c.parent_id,
                links.c.child_id,
                links.c.attempts,
                # Left as it was: every earlier attempt that ended sets it (the
                # lease of one that never ended ran out, and its claim counted).
                links.c.last_error,
            )
        )
        with self.transaction() as connection:
            rows = connection.execute(statement).all()
        return [
            Job(
                id=row.id,
                parent=EntityRef(row.parent_type, row.parent_ref),
                relationship=row.relationship,
                child=EntityRef(row.child_type, row.child_ref),
                parent_id=row.parent_id,
                child_id=row.child_id,
                attempts=row.attempts,
                token=token,
                first_attempt=row.attempts == 1 and row.last_error is None,
            )
            for row in sorted(rows, key=lambda row: row.id)
        ]

    def prepare(
        self, job: Job, parent_id: str, child_id: str, *, lease: float, now: float | None = None
    ) -> tuple[bool, int | None]:
        """Record the UUIDs of a job's refs and renew its lease just before the POST.

        Returns (still held, twin): `held` is false when the lease went to another
        worker; `twin` is the id of an older link this one turned out to be once
        case keys were resolved, in which case this one is merged into it.
        """
        now = time.time() if now is None else now
        with self.transaction() as connection:
            try:
                with connection.begin_nested():
                    updated = connection.execute(
                        links.update()
                        .where(links.c.id == job.id, links.c.claim_token == job.token)
                        .values(
                            parent_id=parent_id,
                            child_id=child_id,
                            lease_until=now + lease,
                            updated_at=now,
                        )
                    ).rowcount
                    return bool(updated), None
            except IntegrityError:
                pass
            twin = connection.execute(
                sa.select(links.c.id, links.c.state).where(
                    links.c.parent_type == job.parent.type,
                    links.c.parent_id == parent_id,
                    links.c.relationship == job.relationship,
                    links.c.child_type == job.child.type,
                    links.c.child_id == child_id,
                )
            ).one()
            merged = connection.execute(
                links.update()
                .where(links.c.id == job.id, links.c.claim_token == job.token)
                .values(
                    state="merged",
                    merged_into=twin.id,
                    claim_token=None,
                    lease_until=None,
                    updated_at=now,
                    last_error=f"the same link as #{twin.id} once case keys were resolved",
                )
            ).rowcount
            if twin.state == "dry_run":
                connection.execute(
                    links.update()
                    .where(links.c.id == twin.id)
                    .values(state="pending", next_attempt_at=now, updated_at=now)
                )
            return bool(merged), int(twin.id)

    def delivered(self, job: Job, datadog_link_id: str, *, existed: bool, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self._finish(
            job,
            state="delivered",
            datadog_link_id=datadog_link_id,
            outcome="existing" if existed else "created",
            delivered_at=now,
            last_error=None,
            last_status=None,
            updated_at=now,
        )

    def retry_later(
        self,
        job: Job,
        error: str,
        *,
        at: float,
        status: int | None = None,
        count_attempt: bool = True,
        now: float | None = None,
    ) -> bool:
        now = time.time() if now is None else now
        values: dict[str, Any] = {
            "state": "pending",
            "next_attempt_at": at,
            "last_error": error[:2000],
            "last_status": status,
            "updated_at": now,
        }
        if not count_attempt:
            values["attempts"] = links.c.attempts - 1
        return self._finish(job, **values)

    def dead(self, job: Job, error: str, *, status: int | None = None, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self._finish(job, state="dead", last_error=error[:2000], last_status=status, updated_at=now)

    def _finish(self, job: Job, **values: Any) -> bool:
        """Write a job's result unless its lease was taken over by another worker."""
        values.setdefault("claim_token", None)
        values.setdefault("lease_until", None)
        with self.transaction() as connection:
            updated = connection.execute(
                links.update()
                .where(links.c.id == job.id, links.c.claim_token == job.token, links.c.state == "claimed")
                .values(**values)
            ).rowcount
        return bool(updated)

    def take_rate_slot(self, name: str, period_number: int, limit: int) -> bool:
        """Count one request in a rate-limit period shared by every process; False when it is full.

        If the store cannot be reached the request is let through: the local
        limiter still holds this process to the limit, and a 429 costs a wait,
        never a link.
        """
        values = {"name": name, "period_number": period_number, "limit": limit}
        try:
            with self._raw_transaction() as cursor:
                sql = self._statements
                cursor.execute(sql.take_rate_slot.sql, sql.take_rate_slot.params(values))
                taken = cursor.fetchone()
                if taken is not None and taken[0] == 1:
                    # A new period began: forget the old ones.
                    cursor.execute(sql.prune_rate_periods.sql, sql.prune_rate_periods.params(values))
        except StoreUnavailableError:
            return True
        return taken is not None

    def known_rate_limit(self, endpoint: str) -> tuple[str, int, float] | None:
        """The rate limit another process learned for this Datadog endpoint, if any."""
        try:
            value = self.get_state(f"ratelimit:{endpoint}")
        except StoreUnavailableError:
            return None
        if not value:
            return None
        name, limit, period = json.loads(value)
        return str(name), int(limit), float(period)

    def learn_rate_limit(self, endpoint: str, name: str, limit: int, period: float) -> None:
        with contextlib.suppress(StoreUnavailableError):
            self.set_state(f"ratelimit:{endpoint}", json.dumps([name, limit, period]))

    def next_due(self) -> float | None:
        """When the earliest pending link becomes due, or a lease runs out."""
        with self.transaction(write=False) as connection:
            pending = connection.execute(
                sa.select(sa.func.min(links.c.next_attempt_at)).where(links.c.state == "pending")
            ).scalar()
            lease = connection.execute(
                sa.select(sa.func.min(links.c.lease_until)).where(links.c.state == "claimed")
            ).scalar()
        candidates = [value for value in (pending, lease) if value is not None]
        return min(candidates) if candidates else None

    # -- shared service state ---------------------------------------------

    def set_state(self, name: str, value: str | None, now: float | None = None) -> None:
        now = time.time() if now is None else now
        statement = self._insert(service_state).values(name=name, value=value, updated_at=now)
        statement = statement.on_conflict_do_update(index_elements=["name"], set_={"value": value, "updated_at": now})
        with self.transaction() as connection:
            connection.execute(statement)

    def get_state(self, name: str) -> str | None:
        with self.transaction(write=False) as connection:
            return connection.execute(sa.select(service_state.c.value).where(service_state.c.name == name)).scalar()

    # -- reading and re-driving --------------------------------------------

    def list_events(
        self, *, limit: int = 50, before: int | None = None, source: str | None = None
    ) -> list[dict[str, Any]]:
        query = sa.select(*_EVENT_SUMMARY_COLUMNS).order_by(events.c.id.desc()).limit(limit)
        before = _cursor(before)
        if before is not None:
            query = query.where(events.c.id < before)
        if source is not None:
            query = query.where(events.c.source == source)
        with self.transaction(write=False) as connection:
            return [_event_summary(row._mapping) for row in connection.execute(query)]

    def get_event(self, event_id: int) -> dict[str, Any]:
        """The explain record: the event, every rule's outcome, and the planned links' states."""
        if not storable_id(event_id):
            raise NotFoundError(f"no event {event_id}")
        with self.transaction(write=False) as connection:
            row = connection.execute(sa.select(events).where(events.c.id == event_id)).first()
            if row is None:
                raise NotFoundError(f"no event {event_id}")
            planned = self._planned_links(connection, row.trace)
            same_key = connection.execute(
                sa.select(events.c.id, events.c.digest)
                .where(events.c.source == row.source, events.c.dedup_key == row.dedup_key, events.c.id != row.id)
                .order_by(events.c.id)
            ).all()
            same_key_events = [other for other, _ in same_key]
            undigested = [other for other, digest in same_key if not digest and other < row.id]
        record = _event_summary(row._mapping)
        record.update(
            dedup_key=row.dedup_key,
            digest=row.digest,
            dedup_conflict=bool(row.dedup_conflict),
            same_key_events=same_key_events,
            dedup=_dedup_note(row.dedup_key, bool(row.dedup_conflict), same_key_events, row.id, undigested),
            message=row.message,
            severity=row.severity,
            priority=row.priority,
            status=row.status,
            url=row.url,
            tags=row.tags,
            occurred_at=row.occurred_at,
            ruleset=row.ruleset,
            rules=row.trace,
            links=planned,
            payload=row.payload,
        )
        return record

    def events_since(self, since: float) -> Iterator[dict[str, Any]]:
        query = sa.select(events).where(events.c.received_at >= since).order_by(events.c.id)
        with self.transaction(write=False) as connection:
            rows = connection.execute(query).all()
        for row in rows:
            yield dict(row._mapping)

    def _planned_links(self, connection: Connection, trace: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The links an event's rules planned, each with the state of its row in the queue."""
        found = []
        for outcome in trace:
            for planned in outcome.get("links", []):
                parent = EntityRef.parse(planned["parent"])
                child = EntityRef.parse(planned["child"])
                same_plan = sa.and_(
                    links.c.parent_type == parent.type,
                    links.c.parent_ref == parent.id,
                    links.c.relationship == planned["relationship"],
                    links.c.child_type == child.type,
                    links.c.child_ref == child.id,
                )
                same_link = sa.and_(
                    links.c.parent_type == parent.type,
                    links.c.parent_id == parent.id,
                    links.c.relationship == planned["relationship"],
                    links.c.child_type == child.type,
                    links.c.child_id == child.id,
                )
                row = connection.execute(
                    sa.select(links).where(sa.or_(same_plan, same_link)).order_by(links.c.id).limit(1)
                ).first()
                if row is None:
                    continue
                found.append(dict(_link_record(row._mapping), rule=outcome["rule"]))
        return found

    def list_links(
        self, *, state: str | None = None, limit: int = 100, before: int | None = None
    ) -> list[dict[str, Any]]:
        query = sa.select(links).order_by(links.c.id.desc()).limit(limit)
        before = _cursor(before)
        if state is not None:
            query = query.where(links.c.state == state)
        if before is not None:
            query = query.where(links.c.id < before)
        with self.transaction(write=False) as connection:
            return [_link_record(row._mapping) for row in connection.execute(query)]

    def get_link(self, link_id: int) -> dict[str, Any]:
        if not storable_id(link_id):
            raise NotFoundError(f"no link {link_id}")
        with self.transaction(write=False) as connection:
            row = connection.execute(sa.select(links).where(links.c.id == link_id)).first()
        if row is None:
            raise NotFoundError(f"no link {link_id}")
        return _link_record(row._mapping)

    def retry(self, link_id: int, now: float | None = None) -> dict[str, Any]:
        """Send a dead (or dry-run) link again: back to pending, attempts from zero."""
        now = time.time() if now is None else now
        if not storable_id(link_id):
            raise NotFoundError(f"no link {link_id}")
        with self.transaction() as connection:
            row = connection.execute(sa.select(links.c.state).where(links.c.id == link_id)).first()
            if row is None:
                raise NotFoundError(f"no link {link_id}")
            if row.state not in ("dead", "dry_run"):
                raise ConflictError(f"link {link_id} is {row.state}; only dead or dry-run links can be retried")
            connection.execute(
                links.update()
                .where(links.c.id == link_id)
                .values(state="pending", attempts=0, next_attempt_at=now, updated_at=now)
            )
            self._notify(connection)
        self._wake.send()
        return self.get_link(link_id)

    def retry_dead(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self.transaction() as connection:
            count = connection.execute(
                links.update()
                .where(links.c.state == "dead")
                .values(state="pending", attempts=0, next_attempt_at=now, updated_at=now)
            ).rowcount
            if count:
                self._notify(connection)
        if count:
            self._wake.send()
        return count

    def page_events(
        self,
        *,
        limit: int = 50,
        before: int | None = None,
        source: str | None = None,
        kind: str | None = None,
        outcome: str | None = None,
        text: str | None = None,
        window: int = EVENT_SEARCH_WINDOW,
    ) -> EventPage:
        """One page of events, newest first, for the status page.

        `before` is the cursor (an event id; the page holds older events).
        `outcome` is one of EVENT_OUTCOMES; `text` is looked for, ignoring
        case, in the title, message, dedup key and entity id. Pages walk the
        primary key backwards; a filtered page looks at no more than `window`
        ids below the cursor, so that a filter that matches rarely costs a
        bounded read instead of a scan of the table: the page then says how
        far it looked (`searched_to`) and its `older` cursor goes on from there.
        """
        _check_outcome(outcome)
        before = _cursor(before)
        for name, value in (("source", source), ("kind", kind), ("text", text)):
            # PostgreSQL refuses NUL in text, and SQLite a LIKE pattern past 50,000 bytes.
            if value is not None and (len(value) > MAX_KEY or "\x00" in value):
                raise BadRequestError(f"{name} must be at most {MAX_KEY} characters, without NUL")
        conditions: list[Any] = []
        if source:
            # `source || ''`: SQLite, which keeps no statistics, would otherwise read every event
            # of the source through the dedup index and sort them, instead of walking the window.
            conditions.append(events.c.source.concat("") == source)
        if kind:
            # Kinds are stored in canonical form; rows stored before that still match as written.
            conditions.append(events.c.kind.in_({canonical_kind(kind), kind}))
        if outcome:
            conditions.append(_OUTCOME_FILTERS[outcome])
        if text:
            conditions.append(
                sa.or_(
                    *(
                        column.icontains(text, autoescape=True)
                        for column in (events.c.title, events.c.message, events.c.dedup_key, events.c.entity_id)
                    )
                )
            )
        query = sa.select(*_EVENT_SUMMARY_COLUMNS).order_by(events.c.id.desc()).limit(limit + 1)
        if before is not None:
            query = query.where(events.c.id < before)
        with self.transaction(write=False) as connection:
            floor = None
            if conditions:
                newest = sa.select(sa.func.max(events.c.id))
                top = before - 1 if before is not None else connection.execute(newest).scalar()
                if top is None:
                    return EventPage([], None, None)
                floor = top - window + 1
                query = query.where(events.c.id >= floor, *conditions)
            rows = [_event_summary(row._mapping) for row in connection.execute(query)]
            lowest = connection.execute(sa.select(sa.func.min(events.c.id))).scalar() if floor is not None else None
        if len(rows) > limit:
            return EventPage(rows[:limit], rows[limit - 1]["id"], None)
        if floor is not None and lowest is not None and floor > lowest:
            return EventPage(rows, floor, floor)
        return EventPage(rows, None, None)

    def page_links(self, *, state: str | None = None, limit: int = 50, after: str | None = None) -> LinkPage:
        """One page of links for the status page, with the cursor of the next one.

        Without `state`: newest first, by id. With a state: by the time of the
        next (or last scheduled) attempt, latest first, which the index on
        (state, next_attempt_at) serves without reading other states' rows.
        `after` is the `next` cursor of the previous page; a malformed one is
        a BadRequestError.
        """
        if state is not None and state not in LINK_STATES:
            raise BadRequestError(f"state must be one of {', '.join(LINK_STATES)}")
        query = sa.select(links).limit(limit + 1)
        if state is None:
            query = query.order_by(links.c.id.desc())
            if after is not None:
                query = query.where(links.c.id < _cursor_id(after))
        else:
            query = query.where(links.c.state == state).order_by(links.c.next_attempt_at.desc(), links.c.id.desc())
            if after is not None:
                moment, link_id = _cursor_moment(after)
                query = query.where(sa.tuple_(links.c.next_attempt_at, links.c.id) < sa.tuple_(moment, link_id))
        with self.transaction(write=False) as connection:
            rows = connection.execute(query).all()
        records = [_link_record(row._mapping) for row in rows[:limit]]
        if len(rows) <= limit:
            return LinkPage(records, None)
        last = rows[limit - 1]
        return LinkPage(records, str(last.id) if state is None else f"{last.next_attempt_at!r}_{last.id}")

    def delivery_errors(self, limit: int = 10) -> list[dict[str, Any]]:
        """The links whose last delivery attempt failed (waiting to retry, or dead), latest first."""
        query = (
            sa.select(links)
            .where(links.c.state.in_(("pending", "claimed", "dead")), links.c.last_error.is_not(None))
            .order_by(links.c.updated_at.desc())
            .limit(limit)
        )
        with self.transaction(write=False) as connection:
            rows = connection.execute(query).all()
        return [dict(_link_record(row._mapping), updated_at=_iso(row.updated_at)) for row in rows]

    def rate_budgets(self, now: float | None = None) -> list[dict[str, Any]]:
        """Each Datadog rate limit the delivery processes learned, with what its current period used.

        Shapes: {"name", "limit", "period" (seconds), "used" (requests counted in
        the current calendar-aligned period), "resets_in" (seconds), "endpoints"}.
        """
        now = time.time() if now is None else now
        with self.transaction(write=False) as connection:
            learned = connection.execute(
                sa.select(service_state.c.name, service_state.c.value).where(
                    service_state.c.name.startswith("ratelimit:", autoescape=True)
                )
            ).all()
            budgets: dict[str, dict[str, Any]] = {}
            for key, value in learned:
                try:
                    name, limit, period = json.loads(value or "")
                    limit, period = int(limit), float(period)
                except (ValueError, TypeError):
                    continue
                if period <= 0:
                    continue
                budget = budgets.setdefault(
                    name, {"name": name, "limit": limit, "period": period, "used": 0, "endpoints": []}
                )
                budget["endpoints"].append(key.removeprefix("ratelimit:"))
            for budget in budgets.values():
                number = int(now // budget["period"])
                used = connection.execute(
                    sa.select(rate_periods.c.used).where(
                        rate_periods.c.name == budget["name"], rate_periods.c.period_number == number
                    )
                ).scalar()
                budget["used"] = used or 0
                budget["resets_in"] = round((number + 1) * budget["period"] - now, 1)
        return sorted(budgets.values(), key=lambda budget: budget["name"])

    def event_bounds(self) -> tuple[int | None, float | None]:
        """The newest event's id and when it was received (Unix seconds), or (None, None)."""
        with self.transaction(write=False) as connection:
            row = connection.execute(
                sa.select(events.c.id, events.c.received_at).order_by(events.c.id.desc()).limit(1)
            ).first()
        return (row.id, row.received_at) if row is not None else (None, None)

    def count_links(self) -> dict[str, int]:
        with self.transaction(write=False) as connection:
            rows = connection.execute(sa.select(links.c.state, sa.func.count()).group_by(links.c.state)).all()
        counts = dict.fromkeys(LINK_STATES, 0)
        counts.update({state: count for state, count in rows})
        return counts

    # -- per-rule statistics and retention ------------------------------------

    def describe(self) -> str:
        """The database this store reads, as a URL without its password."""
        return masked_url(sa.engine.make_url(self.url).render_as_string(hide_password=True))

    def count_events(self) -> int:
        with self.transaction(write=False) as connection:
            return int(connection.execute(sa.select(sa.func.count()).select_from(events)).scalar_one())

    def find_events(
        self,
        *,
        source: str | None = None,
        kind: str | None = None,
        outcome: str | None = None,
        since: float | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Event summaries, newest first, filtered; `outcome` is one of EVENT_OUTCOMES.

        events has no index but its primary key and dedup key (each index is
        pages more per webhook), so this walks back from the newest event:
        cheap for recent events, a scan for rare ones. A BadRequestError for
        an unknown outcome.
        """
        _check_outcome(outcome)
        query = (
            sa.select(
                events.c.id,
                events.c.source,
                events.c.kind,
                events.c.entity_type,
                events.c.entity_id,
                events.c.title,
                events.c.received_at,
                events.c.links_planned,
                events.c.problem,
            )
            .order_by(events.c.id.desc())
            .limit(limit)
        )
        if source is not None:
            query = query.where(events.c.source == source)
        if kind is not None:
            # Kinds are stored canonical (rows from before, as written: both are matched).
            query = query.where(events.c.kind.in_({kind, canonical_kind(kind)}))
        if since is not None:
            query = query.where(events.c.received_at >= since)
        if outcome is not None:
            query = query.where(_OUTCOME_FILTERS[outcome])
        with self.transaction(write=False) as connection:
            return [_event_summary(row._mapping) for row in connection.execute(query)]

    def count_rule_stats(self, *, limit: int = 500, now: float | None = None, settle: float | None = None) -> int:
        """Add the next events not yet counted to the per-rule, per-hour statistics; return how many.

        Reads up to `limit` events after the watermark outside any write
        transaction, then in one short transaction adds their sums and moves the
        watermark, unless another process moved it meanwhile (then nothing is
        written and the caller tries again): counting is idempotent and survives
        a crash at any point. On PostgreSQL, ids are taken before commit, so an
        event is counted only `settle` seconds after it was received (default
        30 s, gunicorn's request timeout): an event with a lower id cannot commit
        after the watermark passed it.
        """
        now = time.time() if now is None else now
        settle = (0.0 if self.dialect == "sqlite" else 30.0) if settle is None else settle
        with self.transaction(write=False) as connection:
            mark = int(connection.execute(_WATERMARK).scalar() or 0)
            rows = connection.execute(
                sa.select(events.c.id, events.c.received_at, events.c.trace)
                .where(events.c.id > mark)
                .order_by(events.c.id)
                .limit(limit)
            ).all()
        counted = []
        for row in rows:
            if row.received_at > now - settle:
                break
            counted.append(row)
        if not counted:
            return 0
        sums: dict[tuple[str, int], list[float]] = {}
        planned: set[tuple[str, str, str, str]] = set()
        for row in counted:
            hour = int(row.received_at // 3600)
            for outcome in row.trace or ():
                if outcome.get("outcome") != "matched":
                    continue
                rule = str(outcome["rule"])[:255]
                entry = sums.setdefault((rule, hour), [0, 0, 0.0])
                entry[0] += 1
                entry[1] += len(outcome.get("links", ()))
                entry[2] = max(entry[2], row.received_at)
                planned.update(
                    (rule, link["parent"], link["relationship"], link["child"]) for link in outcome.get("links", ())
                )
        with self.transaction() as connection:
            connection.execute(
                self._insert(service_state)
                .values(name=_STATS_WATERMARK, value="0", updated_at=now)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            current = connection.execute(_WATERMARK.with_for_update()).scalar()
            if int(current or 0) != mark:
                return 0
            if sums:
                upsert = self._insert(rule_stats)
                latest = sa.func.max if self.dialect == "sqlite" else sa.func.greatest
                connection.execute(
                    upsert.on_conflict_do_update(
                        index_elements=["rule", "hour"],
                        set_={
                            "matched": rule_stats.c.matched + upsert.excluded.matched,
                            "links_planned": rule_stats.c.links_planned + upsert.excluded.links_planned,
                            "last_matched_at": latest(rule_stats.c.last_matched_at, upsert.excluded.last_matched_at),
                        },
                    ),
                    [
                        {"rule": rule, "hour": hour, "matched": m, "links_planned": p, "last_matched_at": at}
                        for (rule, hour), (m, p, at) in sums.items()
                    ],
                )
            # Most events plan links some event planned before: each pair is written once per process.
            fresh = planned - self._rule_links_written
            if fresh:
                connection.execute(_RULE_LINK, [_rule_link_params(*entry) for entry in fresh])
            connection.execute(
                service_state.update()
                .where(service_state.c.name == _STATS_WATERMARK)
                .values(value=str(counted[-1].id), updated_at=now)
            )
        if len(self._rule_links_written) > 50_000:
            self._rule_links_written.clear()
        self._rule_links_written |= fresh
        return len(counted)

    def rule_stats(self, since: datetime | None = None) -> dict[str, RuleStats]:
        """Per-rule statistics of the events counted so far, all time or from `since`.

        Counted by the hour: `since` is taken back to the start of its hour. The
        housekeeping step counts events a few seconds after they are stored (see
        `count_rule_stats`), and pruning removes only events already counted.
        """
        start = since.timestamp() if since is not None else None
        matched = sa.select(
            rule_stats.c.rule,
            sa.func.sum(rule_stats.c.matched),
            sa.func.sum(rule_stats.c.links_planned),
            sa.func.max(rule_stats.c.last_matched_at),
        ).group_by(rule_stats.c.rule)
        delivered = (
            sa.select(rule_links.c.rule, sa.func.count())
            .join(links, links.c.id == rule_links.c.link_id)
            .where(links.c.state == "delivered")
            .group_by(rule_links.c.rule)
        )
        if start is not None:
            matched = matched.where(rule_stats.c.hour >= int(start // 3600))
            delivered = delivered.where(links.c.delivered_at >= start)
        with self.transaction(write=False) as connection:
            counts = connection.execute(matched).all()
            sent: dict[str, int] = dict(connection.execute(delivered).all())
        stats = {
            rule: RuleStats(
                rule=rule,
                matched=int(hits),
                links_planned=int(planned),
                links_delivered=int(sent.get(rule, 0)),
                last_matched_at=datetime.fromtimestamp(last, UTC) if last else None,
            )
            for rule, hits, planned, last in counts
        }
        for rule, count in sent.items():
            stats.setdefault(rule, RuleStats(rule, 0, 0, int(count), None))
        return stats

    def prune_events(self, before: float, *, after_id: int = 0, limit: int = 100, dry_run: bool = False) -> PruneBatch:
        """Delete up to `limit` events received before `before`, oldest first, after `after_id`.

        Kept: events not yet counted in the per-rule statistics, and events with
        a link that is not final (pending, retrying or claimed). Links are never
        deleted: their natural keys are the exactly-once ledger. The candidates
        are read outside the write transaction, which deletes by primary key
        only, so it stays short. Events are walked in id order and the walk
        stops at the first one young enough to keep: ids follow arrival, so no
        index on received_at is needed (nor paid for on every webhook).
        """
        # Links not yet final are few (the queue); read first, so a link finished meanwhile keeps its event.
        busy = self._unfinished_links()
        with self.transaction(write=False) as connection:
            mark = int(connection.execute(_WATERMARK).scalar() or 0)
            if self.dialect == "sqlite":
                # SQLite gives a new row the highest id + 1: with every event deleted, new
                # ones would take ids below the watermark and never be counted. Keep the newest.
                newest = connection.execute(sa.select(sa.func.max(events.c.id))).scalar() or 0
                mark = min(mark, newest - 1)
            rows = connection.execute(
                sa.select(events.c.id, events.c.received_at, events.c.links_planned)
                .where(events.c.id > after_id, events.c.id <= mark)
                .order_by(events.c.id)
                .limit(limit)
            ).all()
            old = [row for row in rows if row.received_at < before]
            if len(old) < len(rows):
                # Ids follow arrival: the first young event ends the walk.
                old = old[: next(index for index, row in enumerate(rows) if row.received_at >= before)]
            # Only an event that planned links while some link is unfinished needs its trace read.
            planning = [row.id for row in old if row.links_planned] if busy else []
            traces = (
                dict(connection.execute(sa.select(events.c.id, events.c.trace).where(events.c.id.in_(planning))).all())
                if planning
                else {}
            )
        doomed: list[int] = []
        kept = 0
        for row in old:
            trace = traces.get(row.id) or ()
            if any(
                (link["parent"], link["relationship"], link["child"]) in busy
                for outcome in trace
                for link in outcome.get("links", ())
            ):
                kept += 1
                continue
            doomed.append(row.id)
        seconds = 0.0
        if doomed and not dry_run:
            started = time.perf_counter()
            with self.transaction() as connection:
                connection.execute(events.delete().where(events.c.id.in_(doomed)))
            seconds = time.perf_counter() - started
        done = len(rows) < limit or len(old) < len(rows)
        last = old[-1].id if old else after_id
        return PruneBatch(deleted=len(doomed), kept=kept, last_id=last, done=done, write_seconds=seconds)

    def _unfinished_links(self) -> set[tuple[str, str, str]]:
        """The planned keys ('CASE:OPS-42', relationship, …) of links not yet final."""
        with self.transaction(write=False) as connection:
            rows = connection.execute(
                sa.select(
                    links.c.parent_type, links.c.parent_ref, links.c.relationship, links.c.child_type, links.c.child_ref
                ).where(links.c.state.in_(("pending", "claimed")))
            ).all()
        return {(f"{row[0]}:{row[1]}", row[2], f"{row[3]}:{row[4]}") for row in rows}


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


class _Wakeup:
    """Wakes an idle SQLite worker on this machine when a commit makes links due.

    SQLite has no LISTEN/NOTIFY, and the delivery worker usually lives in
    another gunicorn process than the one that took the webhook. The worker
    binds a datagram socket named after the database; every commit that plans
    links sends it one byte. Without a listener the byte goes nowhere and the
    worker's poll finds the links instead.
    """

    def __init__(self, url: str | None) -> None:
        database = sa.engine.make_url(url).database if url else None
        self.path: str | None = None
        if database and database != ":memory:":
            # Unix socket paths are short (108 bytes); the database path may not be.
            digest = hashlib.sha256(os.path.abspath(database).encode()).hexdigest()[:16]
            self.path = os.path.join(tempfile.gettempdir(), f"caselink-{digest}.wake")
        self._sender: socket.socket | None = None

    def send(self) -> None:
        if self.path is None:
            return
        try:
            if self._sender is None:
                self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sender.setblocking(False)
            self._sender.sendto(b"!", self.path)
        except OSError:
            pass  # no worker listening, or its queue is full: it is awake or will poll

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None

    def listen(self, on_notify: Callable[[], None], stop: threading.Event) -> None:
        if self.path is None:
            return
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bound = self._bind(listener)
        try:
            listener.settimeout(1.0)
            while bound and not stop.is_set():
                try:
                    listener.recv(64)
                except TimeoutError:
                    continue
                except OSError:
                    return
                on_notify()
        finally:
            listener.close()
            if bound:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)

    def _bind(self, listener: socket.socket) -> bool:
        """Bind the socket unless another live worker holds it (then that one is woken instead)."""
        assert self.path is not None
        try:
            listener.bind(self.path)
        except OSError:
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                probe.connect(self.path)
                return False
            except OSError:
                # Left behind by a process that died: take it over.
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                try:
                    listener.bind(self.path)
                except OSError:
                    return False
            finally:
                probe.close()
        return True


class _WriteLock:
    """One SQLite writer at a time across this machine's caselink processes, queued by the kernel."""

    def __init__(self, url: str) -> None:
        database = sa.engine.make_url(url).database
        self._path = f"{database}.lock" if database and database != ":memory:" else None
        self._threads = threading.Lock()
        self._file: Any = None

    def __enter__(self) -> None:
        self._threads.acquire()
        if self._path is None:
            return
        try:
            if self._file is None:
                self._file = open(self._path, "a")  # noqa: SIM115 - kept open for the life of the process
            fcntl.flock(self._file, fcntl.LOCK_EX)
        except OSError:
            # No lock file (a read-only directory, say): SQLite's own busy wait still serialises writers.
            pass

    def __exit__(self, *_exc: object) -> None:
        try:
            if self._file is not None:
                fcntl.flock(self._file, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def close(self) -> None:
        with self._threads:
            if self._file is not None:
                self._file.close()
                self._file = None


# The last event id counted in rule_stats (service_state), and how to read it.
_STATS_WATERMARK = "rule_stats_through"
_WATERMARK = sa.select(service_state.c.value).where(service_state.c.name == _STATS_WATERMARK)
_RULE_LINK = sa.text(
    "INSERT INTO rule_links (rule, link_id) SELECT :rule, id FROM links WHERE"
    " parent_type = :parent_type AND parent_ref = :parent_ref AND relationship = :relationship"
    " AND child_type = :child_type AND child_ref = :child_ref ON CONFLICT DO NOTHING"
)


def _check_outcome(outcome: str | None) -> None:
    if outcome and outcome not in EVENT_OUTCOMES:
        raise BadRequestError(f"outcome must be one of {', '.join(EVENT_OUTCOMES)}")


def _rule_link_params(rule: str, parent: str, relationship: str, child: str) -> dict[str, str]:
    parent_ref, child_ref = EntityRef.parse(parent), EntityRef.parse(child)
    return {
        "rule": rule,
        "parent_type": parent_ref.type,
        "parent_ref": parent_ref.id,
        "relationship": relationship,
        "child_type": child_ref.type,
        "child_ref": child_ref.id,
    }


# Bound values per statement stay far below SQLite's limit of 32766.
_ROWS_PER_INSERT = 500
_EVENT_COLUMNS = (
    "source", "dedup_key", "kind", "entity_type", "entity_id", "title", "message", "severity", "priority",
    "status", "url", "tags", "occurred_at", "payload", "problem", "received_at", "ruleset", "trace", "links_planned",
    "digest", "dedup_conflict",
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


class _Statement:
    """SQL compiled once for this database, run on the DBAPI cursor.

    The webhook path runs these few statements straight on the pooled DBAPI
    connection: at webhook rates SQLAlchemy's per-execution work (compiling,
    caching, result wrapping) costs several times what the database does.
    """

    def __init__(self, sql: str, dialect: sa.engine.Dialect) -> None:
        compiled = sa.text(sql).compile(dialect=dialect)
        self.sql = compiled.string
        order = compiled.positiontup
        # Positional drivers (sqlite3) take a tuple in the compiled order; named ones (psycopg) the dict.
        self._pick = itemgetter(*order) if order and len(order) > 1 else None
        self._single = order[0] if order and len(order) == 1 else None
        self.positional = order is not None

    def params(self, values: dict[str, Any]) -> Any:
        if self._pick is not None:
            return self._pick(values)
        if self._single is not None:
            return (values[self._single],)
        return values


class _RowsStatement(_Statement):
    """A statement with the same names bound for each of several rows (`:name_0`, `:name_1`, …).

    `binds` are (name, column) pairs in the order the statement binds them in a
    row; a column may be bound under two names (PostgreSQL types each name once).
    """

    def __init__(self, sql: str, dialect: sa.engine.Dialect, binds: tuple[tuple[str, str], ...]) -> None:
        super().__init__(sql, dialect)
        self._binds = binds
        self._row = itemgetter(*(column for _, column in binds))

    def params_of_rows(self, rows: list[dict[str, Any]]) -> Any:
        if self.positional:
            # Positional drivers (sqlite3) bind the rows' columns in order, row after row.
            return [value for row in rows for value in self._row(row)]
        return {f"{name}_{index}": row[column] for index, row in enumerate(rows) for name, column in self._binds}


class _Statements:
    def __init__(self, dialect: sa.engine.Dialect) -> None:
        def statement(sql: str) -> _Statement:
            return _Statement(sql, dialect)

        self._dialect = dialect
        self._insert_events: dict[int, _RowsStatement] = {}
        self.find_event = statement(
            "SELECT id, links_planned, dedup_conflict FROM events"
            " WHERE source = :source AND dedup_key = :dedup_key AND digest = :digest"
        )
        # No conflict target: a link already planned, or already resolved to these UUIDs, is left alone.
        self.insert_link = statement(
            f"INSERT INTO links ({', '.join(_LINK_COLUMNS)}) VALUES ({', '.join(':' + c for c in _LINK_COLUMNS)})"  # noqa: S608 - constant column names; values are bound
            " ON CONFLICT DO NOTHING"
        )
        self.any_dormant = statement("SELECT 1 FROM links WHERE state = 'dry_run' LIMIT 1")
        wake = "UPDATE links SET state = 'pending', next_attempt_at = :now, updated_at = :now WHERE state = 'dry_run'"
        self.promote_planned = statement(f"{wake} AND {_PLANNED}")
        self.promote_resolved = statement(f"{wake} AND {_RESOLVED}")
        self.notify = statement(f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')")
        self.take_rate_slot = statement(
            "INSERT INTO rate_periods (name, period_number, used) VALUES (:name, :period_number, 1)"
            " ON CONFLICT (name, period_number) DO UPDATE SET used = rate_periods.used + 1"
            " WHERE rate_periods.used < :limit RETURNING used"
        )
        self.prune_rate_periods = statement(
            "DELETE FROM rate_periods WHERE name = :name AND period_number < :period_number"
        )

    def insert_events(self, count: int) -> _RowsStatement:
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
            statement = self._insert_events[count] = _RowsStatement(sql, self._dialect, _EVENT_BINDS)
        return statement


def _event_row(event: Event, evaluation: Evaluation, ruleset: str, now: float) -> dict[str, Any]:
    payload = jsontext.dumps(event.payload)
    return {
        "source": event.source,
        "dedup_key": _bounded_key(event.dedup_key),
        "kind": event.kind[:255],
        "entity_type": event.entity.type if event.entity else None,
        "entity_id": event.entity.id if event.entity else None,
        "title": event.title,
        "message": event.message,
        "severity": event.severity[:255],
        "priority": event.priority[:255],
        "status": event.status[:255],
        "url": event.url,
        "tags": jsontext.dumps({name: list(values) for name, values in event.tags.items()}),
        "occurred_at": event.occurred_at[:64] if event.occurred_at else None,
        "payload": payload,
        "problem": event.problem,
        "received_at": now,
        "ruleset": ruleset,
        "trace": jsontext.dumps(evaluation.trace()),
        "links_planned": len(evaluation.links),
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


_EVENT_SUMMARY_COLUMNS = (
    events.c.id, events.c.source, events.c.kind, events.c.entity_type, events.c.entity_id, events.c.title,
    events.c.received_at, events.c.links_planned, events.c.problem,
)  # fmt: skip


def _cursor_id(cursor: str) -> int:
    try:
        found = int(cursor)
    except ValueError:
        found = 0
    if not storable_id(found):
        raise BadRequestError("the page cursor is not one caselink wrote; start from the first page")
    return found


def _cursor_moment(cursor: str) -> tuple[float, int]:
    moment, _, link_id = cursor.partition("_")
    try:
        found = float(moment), _cursor_id(link_id)
    except ValueError:
        found = None
    if found is None or not math.isfinite(found[0]):
        raise BadRequestError("the page cursor is not one caselink wrote; start from the first page")
    return found


def _dedup_note(key: str, conflict: bool, same_key: list[int], event_id: int, undigested: list[int]) -> str:
    """What deduplication did with an event, for its explain record.

    `undigested` are the earlier events with its key stored before content
    digests (digest ''): their content is unknown, so a repeat of one is no conflict.
    """
    earlier = [other for other in same_key if other < event_id]
    if conflict:
        shown = ", ".join(f"#{other}" for other in earlier) or "an earlier event"
        return f"dedup key {key!r} repeated {shown} with different content: stored and evaluated as a new event"
    if undigested:
        shown = ", ".join(f"#{other}" for other in undigested)
        return (
            f"dedup key {key!r} repeated {shown}, which predates content digests: its content is unknown,"
            " so this delivery was stored once more, not as a conflict"
        )
    later = [other for other in same_key if other > event_id]
    if later:
        return f"the first event with dedup key {key!r}; later events with other content: " + ", ".join(
            f"#{other}" for other in later
        )
    return f"the only event with dedup key {key!r}; a delivery with this key and the same content is a duplicate"


def _event_summary(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "source": row["source"],
        # Rows stored before kinds were canonical read as new ones are written.
        "kind": canonical_kind(row["kind"]),
        "entity": f"{row['entity_type']}:{row['entity_id']}" if row["entity_type"] else None,
        "title": row["title"],
        "received_at": _iso(row["received_at"]),
        "links_planned": row["links_planned"],
        "problem": row["problem"],
    }


def _link_record(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "parent": f"{row['parent_type']}:{row['parent_ref']}",
        "relationship": row["relationship"],
        "child": f"{row['child_type']}:{row['child_ref']}",
        "parent_id": row["parent_id"],
        "child_id": row["child_id"],
        "state": row["state"],
        "attempts": row["attempts"],
        "claimed_by": row["claimed_by"],
        "next_attempt_at": _iso(row["next_attempt_at"]) if row["state"] == "pending" else None,
        "last_error": row["last_error"],
        "last_status": row["last_status"],
        "datadog_link_id": row["datadog_link_id"],
        "outcome": row["outcome"],
        "merged_into": row["merged_into"],
        "created_at": _iso(row["created_at"]),
        "delivered_at": _iso(row["delivered_at"]),
    }


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment % 1 * 1000):03d}Z"


def _bounded_key(key: str) -> str:
    if len(key) <= MAX_KEY:
        return key
    import hashlib

    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def _is_transient(exc: BaseException | None) -> bool:
    """A deadlock or serialization failure: the same transaction may succeed if run again."""
    code = getattr(getattr(exc, "orig", exc), "sqlstate", None)
    return code in ("40P01", "40001")


def _first_line(exc: BaseException) -> str:
    """The first line of an error about a value (never about the connection), for the sender."""
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _reason(exc: BaseException) -> str:
    """The driver's own words, first line: for the operator (it may name host, port and database)."""
    original = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    return "; ".join(lines[:2])[:300] if lines else type(original).__name__


# SQLSTATE classes and codes of PostgreSQL errors that say the database cannot be used now,
# and what a sender may be told of them.
_PG_UNAVAILABLE = {
    "08": "cannot connect to the database",
    "3D": "the database does not exist",
    "28": "the database refused caselink's credentials",
    "53": "the database server is out of resources (disk, memory or connections)",
    "57": "the database server is shutting down or starting",
    "58": "the database server had an I/O error",
    "25006": "the database is read-only",
}
# SQLite errors that mean the file cannot be used now, whatever the statement.
_SQLITE_UNAVAILABLE = ("SQLITE_READONLY", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_NOTADB",
                       "SQLITE_CORRUPT", "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_PERM")  # fmt: skip


def _is_unavailable(exc: BaseException) -> bool:
    """Whether a database error says the database cannot be used now (not that the statement was wrong)."""
    original = getattr(exc, "orig", None) or exc
    if isinstance(exc, OperationalError) or type(original).__name__ == "OperationalError":
        return True
    state = getattr(original, "sqlstate", None)
    if isinstance(state, str):
        return state in _PG_UNAVAILABLE or state[:2] in _PG_UNAVAILABLE
    name = getattr(original, "sqlite_errorname", None)
    return isinstance(name, str) and name.startswith(_SQLITE_UNAVAILABLE)


def _public_reason(exc: BaseException, dialect: str) -> str:
    """Why the database cannot be used, in words that name no host, port, database or path."""
    original = getattr(exc, "orig", None) or exc
    if dialect == "sqlite":
        # SQLite's messages name no file: "attempt to write a readonly database", "database or disk is full".
        return str(original).splitlines()[0][:200] if str(original) else type(original).__name__
    state = getattr(original, "sqlstate", None)
    if isinstance(state, str):
        return _PG_UNAVAILABLE.get(state) or _PG_UNAVAILABLE.get(state[:2]) or "the database answered with an error"
    return "cannot connect to the database"


# The largest id an id column holds on either store (BIGINT on PostgreSQL, INTEGER on SQLite).
LARGEST_ID = 2**63 - 1


def storable_id(value: int) -> bool:
    """Whether `value` is an id the database can hold (1 ..= LARGEST_ID): a larger one is no
    row, not an OverflowError or "bigint out of range"."""
    return 1 <= value <= LARGEST_ID


def _cursor(before: int | None) -> int | None:
    """A `before` cursor past every id means no cursor."""
    return None if before is None or before > LARGEST_ID else before


def describe_url(url: str) -> str:
    """`DATABASE_URL (postgresql://user:***@host:5432/name)`: which database, never the password."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return "DATABASE_URL (not a URL)"
    shown = parsed.set(drivername=parsed.get_backend_name()).render_as_string(hide_password=True)
    return f"DATABASE_URL ({masked_url(shown)})"


def database_error(url: str, exc: BaseException) -> StoreUnavailableError | None:
    """StoreUnavailableError for a database error raised outside a Store (migrations), or None
    when the error is not about reaching or writing the database."""
    if not isinstance(exc, DBAPIError | sqlite3.Error) or not _is_unavailable(exc):
        return None
    dialect = "postgresql" if url.startswith("postgresql") else "sqlite"
    return StoreUnavailableError(
        f"the database is unavailable: {_public_reason(exc, dialect)}", operator=f"{describe_url(url)}: {_reason(exc)}"
    )


def _prepare_sqlite_path(url: str) -> str | None:
    """Make the folder and the (empty) database file of a SQLite URL; return the file's path,
    None for an in-memory or `file:` URI database."""
    database = sa.engine.make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = os.path.abspath(database)
    with contextlib.suppress(OSError):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Only here is the file created: connections open it with mode=rw.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
    return path


# Below this much free space beside a SQLite file, readiness fails: a write that fits in
# the WAL's old frames still commits, a webhook that needs new ones does not.
MIN_FREE_BYTES = 1024 * 1024


class _DatabaseFile:
    """The SQLite file at the configured path, as the connections have it open.

    A file deleted or replaced under a running process keeps its open
    connections writing to the old inode, so commits succeed and vanish at
    the next restart. Two stat(2)s before each write transaction and after
    its commit notice that, and that the files cannot be written.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._companions = (f"{path}-wal", f"{path}-shm")
        self._identity: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def check_space(self) -> None:
        """StoreUnavailableError when the disk holding the file is (nearly) full."""
        try:
            found = os.statvfs(os.path.dirname(self.path))
        except OSError:
            return
        if found.f_bavail * found.f_frsize < MIN_FREE_BYTES:
            raise StoreUnavailableError(
                "the disk holding the database is full",
                operator=f"DATABASE_URL (sqlite:///{self.path}): under {MIN_FREE_BYTES // 1024} KiB free on its disk",
            )

    def check(self) -> bool:
        """True when another file now stands at the path (from then on it is the one);
        StoreUnavailableError when none does or it cannot be written."""
        try:
            found = os.stat(self.path)
        except OSError as exc:
            raise StoreUnavailableError(
                "the database file is gone",
                operator=f"DATABASE_URL (sqlite:///{self.path}): the file was deleted or moved while caselink ran "
                f"({exc.strerror}); restore it, or run `bin/caselink db upgrade` to start an empty one",
            ) from None
        for path in (self.path, *self._companions):
            # Writing through files that turned read-only can kill the process (SIGBUS on SQLite's
            # shared-memory file); refusing first costs an access(2) each.
            if not os.access(path, os.W_OK) and os.path.exists(path):
                raise StoreUnavailableError(
                    "the database is read-only",
                    operator=f"DATABASE_URL (sqlite:///{self.path}): {os.path.basename(path)} cannot be written",
                )
        identity = (found.st_dev, found.st_ino)
        with self._lock:
            if self._identity is None:
                self._identity = identity
                return False
            if identity == self._identity:
                return False
            self._identity = identity
            return True


def _configure_sqlite(engine: Engine) -> None:
    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's BEGIN below decide transactions, not the sqlite3 module.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives the process being killed; only an
        # OS crash or power cut can lose the last transactions.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        # No memory map of the database (mmap_size stays 0): it made reading pages
        # back after another process's commit cheaper, but a file that is truncated,
        # replaced or turns unwritable under a map kills the process with SIGBUS.
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa_event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # A writer takes the write lock up front, so two writers queue instead of
        # failing when a read lock cannot be upgraded; readers never block in WAL.
        read_only = connection.get_execution_options().get("caselink_read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
