"""The delivery queue: links claimed under a lease, fenced by a token against late writers,
retried with backoff, dead letters kept with their reason and sent again on request, and the
wake-ups that tell idle workers a link is due.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from caselink.errors import ConflictError
from caselink.errors import NotFoundError
from caselink.events import EntityRef
from caselink.schema import links
from caselink.store.engine import Database
from caselink.store.engine import storable_id
from caselink.store.records import link_record

# PostgreSQL channel on which a commit that makes links due wakes idle workers.
NOTIFY_CHANNEL = "caselink_links"


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
    # When it became due (time.time()): for a first attempt, when a webhook planned it or a
    # live rule woke it. A listing of Datadog's links from before then may miss one made by hand.
    due_at: float | None = None

    def __str__(self) -> str:
        return f"{self.parent} {self.relationship} {self.child}"


class Queue(Database):
    """Claiming, leasing, finishing and re-driving links, and waking the workers that do."""

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
                links.c.next_attempt_at,
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
                due_at=row.next_attempt_at,
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

    def postpone(self, job: Job, *, at: float, now: float | None = None) -> bool:
        """Put a claimed job back, due at `at`, as if it had not been tried: its attempt is not
        counted and its next one is a first attempt still. False if the lease was lost."""
        now = time.time() if now is None else now
        return self._finish(job, state="pending", next_attempt_at=at, attempts=links.c.attempts - 1, updated_at=now)

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

    def get_link(self, link_id: int) -> dict[str, Any]:
        if not storable_id(link_id):
            raise NotFoundError(f"no link {link_id}")
        with self.transaction(write=False) as connection:
            row = connection.execute(sa.select(links).where(links.c.id == link_id)).first()
        if row is None:
            raise NotFoundError(f"no link {link_id}")
        return link_record(row._mapping)

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
