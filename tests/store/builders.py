"""Events, evaluations and links as the store tests build them, and reads of what was stored."""

from __future__ import annotations

import sqlalchemy as sa

from caselink.events import EntityRef
from caselink.events import Event
from caselink.rules import Evaluation
from caselink.rules import PlannedLink
from caselink.rules import RuleOutcome
from caselink.schema import events
from caselink.schema import links
from caselink.store import Store

INCIDENT = "01c03111-172a-50c7-8df3-d61e64b0e74b"
OTHER_INCIDENT = "3b1f0c2e-9a7d-4e55-8c21-6f0e2d9a1b44"
CASE_UUID = "9daaa414-8843-46e2-8360-c36d3713285f"
DAY = 86400.0
NOW = 1_780_000_000.0


def event(dedup_key: str = "d1", incident: str = INCIDENT, **fields) -> Event:
    return Event(
        source="datadog",
        kind="incident.created",
        dedup_key=dedup_key,
        entity=EntityRef("INCIDENT", incident),
        **{"title": "see OPS-42", "payload": {"id": dedup_key}, **fields},
    )


def planning(*links: tuple[str, PlannedLink], dry_run: bool = False) -> Evaluation:
    outcomes = {}
    for rule, link in links:
        outcomes.setdefault(rule, RuleOutcome(rule, "matched", dry_run=dry_run)).links.append(link)
    return Evaluation(list(outcomes.values()))


def causes(incident: str = INCIDENT, case: str = "OPS-42") -> PlannedLink:
    return PlannedLink(EntityRef("INCIDENT", incident), "CAUSES", EntityRef.checked("CASE", case))


def event_ids(store: Store) -> dict[str, int]:
    with store.engine.connect() as connection:
        return dict(connection.execute(sa.select(events.c.dedup_key, events.c.id)).all())


def receive(store: Store, key: str, at: float, evaluation: Evaluation | None = None, *, dry_run: bool = False) -> int:
    evaluation = evaluation if evaluation is not None else planning(("r1", causes()))
    [stored] = store.record([(event(key), evaluation)], ruleset="abc", dry_run=dry_run, now=at)
    return stored.id


def unmatched(rule: str = "r2") -> Evaluation:
    return Evaluation([RuleOutcome(rule, "not_matched", "title does not contain 'x'")])


def stored_ids(store: Store) -> list[int]:
    with store.engine.connect() as connection:
        return list(connection.execute(sa.select(events.c.id).order_by(events.c.id)).scalars())


def link_states(store: Store) -> list[str]:
    with store.engine.connect() as connection:
        return list(connection.execute(sa.select(links.c.state).order_by(links.c.id)).scalars())


def set_link_state(store: Store, state: str) -> None:
    with store.engine.begin() as connection:
        connection.execute(links.update().values(state=state))
