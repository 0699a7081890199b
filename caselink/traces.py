"""An event's trace as stored, small, and as read, complete.

A trace is stored in one of two forms:

- the full form, a list with every rule's outcome as the API shows it (traces stored
  before rule sets were, and evaluations that come from no stored rule set);
- the compact form, `{"rule_set": DIGEST, "matched": [{"index": N, …outcome}], "added": […]}`:
  the rules that matched, with their links and problems in full, and a reference to the
  rule set (the `rule_sets` table keeps its text). `added` holds what `replay --apply`
  planned later; `unsearched`, when there are any, the rules whose search the event's budget
  refused (`{"index": N, "rule": NAME, "reason": "not searched: …"}`).

`render` turns either into the full list, in the same sentences as the evaluation gave:
the rules that did not match are asked again, against the stored rule set and the event
as stored, why they did not (caselink.rules.evaluation.explain).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from typing import Any

from caselink.errors import RulesError
from caselink.events import EntityRef
from caselink.events import Event
from caselink.rules import Evaluation
from caselink.rules import PlannedLink
from caselink.rules import RuleOutcome
from caselink.rules import RuleSet
from caselink.rules import explain
from caselink.rules import parse_rules

RULE_SETS_KEPT = 1  # rule sets parsed to read old traces: the last one (the one in force is kept apart)


def stored_form(event: Event, evaluation: Evaluation) -> list[dict[str, Any]] | dict[str, Any]:
    """What the events table keeps of an evaluation: compact when its rule set is stored with it."""
    ruleset = evaluation.ruleset
    # An event is read back as it was evaluated: its fields are cut to their columns when it is
    # made (caselink.events.CUT_FIELDS), so the trace can refer to its rule set.
    if ruleset is None or not ruleset.text or not ruleset.digest:
        return evaluation.trace()
    stored: dict[str, Any] = {
        "rule_set": ruleset.digest,
        "matched": [_entry(position, outcome.as_dict()) for position, outcome in evaluation.positions.items()],
    }
    if evaluation.unsearched:
        # Read again later with a budget of their own, their searches could hold: keep why they did not.
        stored["unsearched"] = [
            _entry(position, outcome.as_dict()) for position, outcome in evaluation.unsearched.items()
        ]
    return stored


def _entry(position: int, record: Mapping[str, Any]) -> dict[str, Any]:
    """A matched rule's record as the compact form keeps it: its position, not its outcome (the list says it)."""
    return {"index": position, **{key: value for key, value in record.items() if key != "outcome"}}


def _matched(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A compact matched entry as the full form lists it."""
    return {"rule": entry["rule"], "outcome": "matched", **_without_index(entry)}


def matched_entries(stored: Any) -> Iterator[dict[str, Any]]:
    """The entries of rules that matched (and of `replay --apply`), with their links: enough to count and queue."""
    if isinstance(stored, Mapping):
        yield from (_matched(entry) for entry in stored.get("matched", ()))
        yield from stored.get("added", ())
        return
    for entry in stored or ():
        if entry.get("outcome") == "matched":
            yield entry


def with_added(stored: Any, entries: list[dict[str, Any]]) -> Any:
    """The trace with entries that `replay --apply` planned, in either form."""
    if isinstance(stored, Mapping):
        return {**stored, "added": [*stored.get("added", ()), *entries]}
    return [*(stored or ()), *entries]


def rule_set_of(stored: Any) -> str | None:
    """The digest of the rule set a compact trace refers to; None for the full form."""
    return str(stored["rule_set"]) if isinstance(stored, Mapping) else None


def render(stored: Any, event: Event, ruleset: RuleSet | None) -> list[dict[str, Any]]:
    """The full trace: every rule's outcome in file order, then what was added later.

    `ruleset` is the stored rule set the trace refers to (None when it cannot be had:
    the matched rules are still listed, with a line saying the others cannot be).
    """
    if not isinstance(stored, Mapping):
        return list(stored or ())
    entries = [_matched(entry) for entry in stored.get("matched", ())]
    if ruleset is None:
        unknown = {
            "rule": "(other rules)",
            "outcome": "unknown",
            "reason": (
                f"rule set {str(stored.get('rule_set'))[:12]} is not stored; only the rules that matched are known"
            ),
        }
        return [*entries, unknown, *stored.get("added", ())]
    matched = {int(entry["index"]): _outcome(entry) for entry in stored.get("matched", ())}
    for entry in stored.get("unsearched", ()):
        matched[int(entry["index"])] = RuleOutcome(str(entry["rule"]), "not_matched", entry.get("reason"))
    return [outcome.as_dict() for outcome in explain(ruleset.rules, event, matched)] + list(stored.get("added", ()))


def _without_index(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if key != "index"}


def _outcome(entry: Mapping[str, Any]) -> RuleOutcome:
    """A stored matched entry as the outcome it was made from (its as_dict gives the entry back)."""
    links = [
        PlannedLink(EntityRef.parse(link["parent"]), link["relationship"], EntityRef.parse(link["child"]))
        for link in entry.get("links", ())
    ]
    outcome = RuleOutcome(
        entry["rule"], "matched", None, links, list(entry.get("problems", ())), dry_run=entry.get("mode") == "dry-run"
    )
    # A reason (none today) is kept as stored rather than cut again.
    outcome.reason = entry.get("reason")
    return outcome


def event_from_row(row: Mapping[str, Any]) -> Event:
    """The event as the events table keeps it, for rules to be asked about again."""
    entity = EntityRef(row["entity_type"], row["entity_id"]) if row["entity_type"] else None
    return Event(
        source=row["source"],
        kind=row["kind"],
        dedup_key=row["dedup_key"],
        entity=entity,
        title=row["title"],
        message=row["message"],
        severity=row["severity"],
        priority=row["priority"],
        status=row["status"],
        url=row["url"],
        tags=row["tags"] or {},
        occurred_at=row["occurred_at"],
        payload=row["payload"],
        problem=row["problem"],
    )


class RuleSetCache:
    """Rule sets by digest: the one in force in this process, and the last one parsed from stored text.

    Parsing a large rule set takes a while, so the last one read is kept; a read of an
    event whose rule set is in force costs no parse at all. A replaced rule set is not held
    (a 150,000-condition set kept its worker at 730 MB after the rules were reverted).
    """

    def __init__(self, kept: int = RULE_SETS_KEPT) -> None:
        self._kept = kept
        self._sets: OrderedDict[str, RuleSet] = OrderedDict()
        self._lock = threading.Lock()
        self.in_force: RuleSet | None = None

    def use(self, ruleset: RuleSet) -> None:
        """The rule set now in force (what webhooks are evaluated with); the one before is let go."""
        if ruleset.digest and ruleset.text:
            self.in_force = ruleset

    def remember(self, ruleset: RuleSet) -> None:
        """Keep a rule set parsed for reading, with the last few others."""
        if not ruleset.digest or not ruleset.text:
            return
        with self._lock:
            self._sets[ruleset.digest] = ruleset
            self._sets.move_to_end(ruleset.digest)
            while len(self._sets) > self._kept:
                self._sets.popitem(last=False)

    def get(self, digest: str, text: Callable[[str], str | None]) -> RuleSet | None:
        """The rule set with this digest; `text` reads its stored text when it is not kept here."""
        in_force = self.in_force
        if in_force is not None and in_force.digest == digest:
            return in_force
        with self._lock:
            found = self._sets.get(digest)
            if found is not None:
                self._sets.move_to_end(digest)
                return found
        source = text(digest)
        if source is None:
            return None
        try:
            # No source names are checked: the rules were valid when they were in force.
            ruleset = parse_rules(source, f"<rule set {digest[:12]}>")
        except RulesError:
            return None
        if ruleset.digest != digest:
            return None  # not the text that was in force: explaining with it would mislead
        self.remember(ruleset)
        return ruleset


RULE_SETS = RuleSetCache()


# ---------------------------------------------------------------------------
# Migrating stored traces (migration 0005 and its downgrade)

_EVENT_COLUMNS = (
    "id", "source", "dedup_key", "kind", "entity_type", "entity_id", "title", "message", "severity",
    "priority", "status", "url", "tags", "occurred_at", "payload", "problem", "received_at", "ruleset", "trace",
)  # fmt: skip
_BATCH = 500


def compacted(stored: Any, event: Event, ruleset: RuleSet) -> dict[str, Any] | None:
    """A full trace made by `ruleset` in compact form, or None when the compact form would not read the same."""
    if isinstance(stored, Mapping) or not isinstance(stored, list) or len(stored) < len(ruleset.rules):
        return None
    evaluated, added = stored[: len(ruleset.rules)], stored[len(ruleset.rules) :]
    if [entry.get("rule") for entry in evaluated] != [rule.name for rule in ruleset.rules]:
        return None
    compact: dict[str, Any] = {
        "rule_set": ruleset.digest,
        "matched": [
            _entry(position, entry) for position, entry in enumerate(evaluated) if entry.get("outcome") == "matched"
        ],
    }
    if added:
        compact["added"] = added
    return compact if render(compact, event, ruleset) == stored else None


def compact_stored_traces(connection: Any, ruleset: RuleSet) -> tuple[int, int]:
    """Store `ruleset` and compact the full traces of the events it evaluated; (compacted, kept in full).

    A trace is compacted only when its compact form renders to exactly the stored sentences,
    so no event's record reads differently afterwards.
    """
    import sqlalchemy as sa

    from caselink.schema import events
    from caselink.schema import rule_sets

    mine = events.c.ruleset == ruleset.digest
    first = connection.execute(sa.select(sa.func.min(events.c.received_at)).where(mine)).scalar()
    if first is None or not ruleset.text:
        return 0, 0
    if connection.execute(sa.select(rule_sets.c.digest).where(rule_sets.c.digest == ruleset.digest)).first() is None:
        connection.execute(
            rule_sets.insert().values(digest=ruleset.digest, path=ruleset.path, text=ruleset.text, first_seen_at=first)
        )
    columns = [events.c[name] for name in _EVENT_COLUMNS]
    done = kept = 0
    after = 0
    while True:
        rows = connection.execute(
            sa.select(*columns).where(mine, events.c.id > after).order_by(events.c.id).limit(_BATCH)
        ).all()
        if not rows:
            return done, kept
        for row in rows:
            after = row.id
            compact = compacted(row.trace, event_from_row(dict(row._mapping)), ruleset)
            if compact is None:
                kept += 1
                continue
            connection.execute(events.update().where(events.c.id == row.id).values(trace=compact))
            done += 1


def expand_stored_traces(connection: Any) -> int:
    """Write every compact trace out in full again (the downgrade of 0005); how many were."""
    import sqlalchemy as sa

    from caselink.schema import events
    from caselink.schema import rule_sets

    texts = dict(connection.execute(sa.select(rule_sets.c.digest, rule_sets.c.text)).all())
    cache = RuleSetCache(kept=len(texts) or 1)
    columns = [events.c[name] for name in _EVENT_COLUMNS]
    done = 0
    after = 0
    while True:
        rows = connection.execute(
            sa.select(*columns).where(events.c.id > after).order_by(events.c.id).limit(_BATCH)
        ).all()
        if not rows:
            return done
        for row in rows:
            after = row.id
            digest = rule_set_of(row.trace)
            if digest is None:
                continue
            ruleset = cache.get(digest, texts.get)
            full = render(row.trace, event_from_row(dict(row._mapping)), ruleset)
            connection.execute(events.update().where(events.c.id == row.id).values(trace=full))
            done += 1
