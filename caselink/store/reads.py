"""What the admin API, the command line and the status page read: events and their explain
records, links, pages walked by cursor, and the counts behind the status page.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from caselink import traces
from caselink.errors import BadRequestError
from caselink.errors import NotFoundError
from caselink.events import EntityRef
from caselink.events import canonical_kind
from caselink.schema import LINK_STATES
from caselink.schema import MAX_KEY
from caselink.schema import events
from caselink.schema import links
from caselink.schema import rule_sets
from caselink.store.engine import LARGEST_ID
from caselink.store.engine import Database
from caselink.store.engine import storable_id
from caselink.store.records import EVENT_SUMMARY_COLUMNS
from caselink.store.records import event_summary
from caselink.store.records import iso
from caselink.store.records import link_record

# What became of an event, as `events list --outcome` and the status page's filter select it:
# linked (it planned a link), not-linked (read, but no rule planned a link), unrecognised (a
# payload caselink could not read), duplicate-conflict (its dedup key repeated an earlier event's
# with other content; such an event is also one of the others). A refused webhook stores no event.
EVENT_OUTCOMES = ("linked", "not-linked", "deferred", "unrecognised", "rejected", "duplicate-conflict")
_OUTCOME_FILTERS = {
    "linked": events.c.links_planned > 0,
    "not-linked": sa.and_(
        events.c.links_planned == 0,
        events.c.kind.not_in(("unrecognised", "rejected")),
        events.c.deferred == sa.false(),
    ),
    "deferred": events.c.deferred == sa.true(),
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


class Reads(Database):
    """Reads of events and links, for the admin API, the command line and the status page."""

    def list_events(
        self, *, limit: int = 50, before: int | None = None, source: str | None = None
    ) -> list[dict[str, Any]]:
        query = sa.select(*EVENT_SUMMARY_COLUMNS).order_by(events.c.id.desc()).limit(limit)
        before = _cursor(before)
        if before is not None:
            query = query.where(events.c.id < before)
        if source is not None:
            query = query.where(events.c.source == source)
        with self.transaction(write=False) as connection:
            return [event_summary(row._mapping) for row in connection.execute(query)]

    def get_event(self, event_id: int) -> dict[str, Any]:
        """The explain record: the event, every rule's outcome, and the planned links' states."""
        if not storable_id(event_id):
            raise NotFoundError(f"no event {event_id}")
        with self.transaction(write=False) as connection:
            row = connection.execute(sa.select(events).where(events.c.id == event_id)).first()
            if row is None:
                raise NotFoundError(f"no event {event_id}")
            planned = self._planned_links(connection, list(traces.matched_entries(row.trace)))
            digest = traces.rule_set_of(row.trace)
            ruleset = (
                traces.RULE_SETS.get(digest, lambda wanted: self._rule_set_text(connection, wanted))
                if digest is not None
                else None
            )
            rendered = traces.render(row.trace, traces.event_from_row(dict(row._mapping)), ruleset)
            same_key = connection.execute(
                sa.select(events.c.id, events.c.digest)
                .where(events.c.source == row.source, events.c.dedup_key == row.dedup_key, events.c.id != row.id)
                .order_by(events.c.id)
            ).all()
            same_key_events = [other for other, _ in same_key]
            undigested = [other for other, digest in same_key if not digest and other < row.id]
        record = event_summary(row._mapping)
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
            rules=rendered,
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

    def _rule_set_text(self, connection: Connection, digest: str) -> str | None:
        text: str | None = connection.execute(sa.select(rule_sets.c.text).where(rule_sets.c.digest == digest)).scalar()
        return text

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
                found.append(dict(link_record(row._mapping), rule=outcome["rule"]))
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
            return [link_record(row._mapping) for row in connection.execute(query)]

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
        query = sa.select(*EVENT_SUMMARY_COLUMNS).order_by(events.c.id.desc()).limit(limit + 1)
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
            rows = [event_summary(row._mapping) for row in connection.execute(query)]
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
        records = [link_record(row._mapping) for row in rows[:limit]]
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
        return [dict(link_record(row._mapping), updated_at=iso(row.updated_at)) for row in rows]

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
        query = sa.select(*EVENT_SUMMARY_COLUMNS).order_by(events.c.id.desc()).limit(limit)
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
            return [event_summary(row._mapping) for row in connection.execute(query)]


def _check_outcome(outcome: str | None) -> None:
    if outcome and outcome not in EVENT_OUTCOMES:
        raise BadRequestError(f"outcome must be one of {', '.join(EVENT_OUTCOMES)}")


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


def _cursor(before: int | None) -> int | None:
    """A `before` cursor past every id means no cursor."""
    return None if before is None or before > LARGEST_ID else before
