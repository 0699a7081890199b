"""Housekeeping's reads and writes: per-rule statistics counted from stored events, and
retention, which deletes old events once counted (links are never deleted).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime

import sqlalchemy as sa

from caselink.events import EntityRef
from caselink.schema import events
from caselink.schema import links
from caselink.schema import rule_links
from caselink.schema import rule_stats
from caselink.schema import service_state
from caselink.store.engine import Database
from caselink.traces import matched_entries


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


# The last event id counted in rule_stats (service_state), and how to read it.
_STATS_WATERMARK = "rule_stats_through"
_WATERMARK = sa.select(service_state.c.value).where(service_state.c.name == _STATS_WATERMARK)
_RULE_LINK = sa.text(
    "INSERT INTO rule_links (rule, link_id) SELECT :rule, id FROM links WHERE"
    " parent_type = :parent_type AND parent_ref = :parent_ref AND relationship = :relationship"
    " AND child_type = :child_type AND child_ref = :child_ref ON CONFLICT DO NOTHING"
)


class Housekeeping(Database):
    """Counting events into per-rule statistics, and pruning events past retention."""

    def _start(self) -> None:
        super()._start()
        # (rule, parent, relationship, child) pairs this process wrote to rule_links.
        self._rule_links_written: set[tuple[str, str, str, str]] = set()

    def count_rule_stats(self, *, limit: int = 500, now: float | None = None, settle: float | None = None) -> int:
        """Add the next events not yet counted to the per-rule, per-hour statistics; return how many.

        Reads up to `limit` events after the watermark outside any write
        transaction, then in one short transaction adds their sums and moves the
        watermark, unless another process moved it meanwhile (then nothing is
        written and the caller tries again): counting is idempotent and survives
        a crash at any point. On PostgreSQL, ids are taken before commit, so an
        event is counted only `settle` seconds after it was received (default
        30 s, gunicorn's request timeout): an event with a lower id cannot commit
        after the watermark passed it. Counting stops at an event whose evaluation is
        deferred, until it is evaluated.
        """
        now = time.time() if now is None else now
        settle = (0.0 if self.dialect == "sqlite" else 30.0) if settle is None else settle
        with self.transaction(write=False) as connection:
            mark = int(connection.execute(_WATERMARK).scalar() or 0)
            rows = connection.execute(
                sa.select(events.c.id, events.c.received_at, events.c.trace, events.c.deferred)
                .where(events.c.id > mark)
                .order_by(events.c.id)
                .limit(limit)
            ).all()
        counted = []
        for row in rows:
            # A deferred event is counted once evaluated (caselink.housekeeping evaluates it first).
            if row.received_at > now - settle or row.deferred:
                break
            counted.append(row)
        if not counted:
            return 0
        sums: dict[tuple[str, int], list[float]] = {}
        planned: set[tuple[str, str, str, str]] = set()
        for row in counted:
            hour = int(row.received_at // 3600)
            for outcome in matched_entries(row.trace):
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
                for outcome in matched_entries(trace)
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
