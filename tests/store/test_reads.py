"""The admin API's, command line's and status page's reads: explain records, pages, filters."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event as sa_event

from caselink import migrations
from caselink.errors import BadRequestError
from caselink.events import EntityRef
from caselink.events import Event
from caselink.rules import Evaluation
from caselink.rules import PlannedLink
from caselink.rules import RuleOutcome
from caselink.store import EVENT_OUTCOMES
from caselink.store import Store
from tests.docs import OPERATIONS
from tests.docs import section
from tests.store.builders import DAY
from tests.store.builders import NOW
from tests.store.builders import causes
from tests.store.builders import event
from tests.store.builders import planning
from tests.store.builders import receive
from tests.store.builders import unmatched


def link_to(case: str) -> PlannedLink:
    return PlannedLink(EntityRef("INCIDENT", "01c03111-172a-50c7-8df3-d61e64b0e74b"), "CAUSES", EntityRef("CASE", case))


def record(
    store: Store,
    key: str,
    *,
    title: str = "",
    kind: str = "incident.created",
    source: str = "datadog",
    case: str | None = None,
    now: float | None = None,
    digest: str = "",
    deferred: bool = False,
) -> int:
    links = [link_to(case)] if case else []
    event = Event(source=source, kind=kind, dedup_key=key, title=title, digest=digest)
    evaluation = Evaluation([RuleOutcome("r", "matched", links=links)] if links else [])
    if deferred:
        evaluation = Evaluation.deferral("waiting")
    [stored] = store.record([(event, evaluation)], ruleset="x", dry_run=False, now=now)
    return stored.id


def ids(page) -> list[int]:
    return [event["id"] for event in page.events]


@pytest.fixture
def sqlite_store(tmp_path: Path):
    built = Store(f"sqlite:///{tmp_path / 'plans.db'}")
    migrations.upgrade(built.engine)
    yield built
    built.dispose()


def query_plans(store: Store, read) -> list[tuple[str, list[str]]]:
    """Each SELECT that `read` runs, with SQLite's plan for it (one line per step)."""
    statements: list[tuple[str, Any]] = []

    def keep(_conn, _cursor, statement, parameters, _context, _many) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    sa_event.listen(store.engine, "before_cursor_execute", keep)
    try:
        read()
    finally:
        sa_event.remove(store.engine, "before_cursor_execute", keep)
    with store.engine.connect() as connection:
        return [
            (statement, [row[-1] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)])
            for statement, parameters in statements
        ]


def test_the_explain_record_shows_the_trace_and_the_link_states(store):
    evaluation = planning(("r1", causes()))
    evaluation.outcomes.append(RuleOutcome("r2", "not_matched", "when[0]: severity in ['SEV-1']: severity is 'SEV-4'"))
    [recorded] = store.record([(event(), evaluation)], ruleset="abc", dry_run=False)

    record = store.get_event(recorded.id)

    assert [rule["outcome"] for rule in record["rules"]] == ["matched", "not_matched"]
    assert record["rules"][1]["reason"].startswith("when[0]")
    assert [(link["child"], link["state"], link["rule"]) for link in record["links"]] == [
        ("CASE:OPS-42", "pending", "r1")
    ]


def test_the_explain_record_says_a_repeated_key_with_other_content_was_stored_as_a_new_event(store):
    [first] = store.record([(event("k"), planning())], ruleset="x", dry_run=False)
    [other] = store.record([(event("k", payload={"id": "k", "v": 2}), planning())], ruleset="x", dry_run=False)

    record = store.get_event(other.id)
    original = store.get_event(first.id)

    assert record["dedup_conflict"] is True
    assert record["same_key_events"] == [first.id]
    assert record["dedup"] == (
        f"dedup key 'k' repeated #{first.id} with different content: stored and evaluated as a new event"
    )
    assert record["digest"] != original["digest"]
    assert original["dedup_conflict"] is False
    assert f"#{other.id}" in original["dedup"]


def test_event_pages_walk_back_by_cursor_until_the_oldest(store):
    newest_first = [record(store, f"k{n}") for n in range(5)][::-1]

    first = store.page_events(limit=2)
    second = store.page_events(limit=2, before=first.older)
    last = store.page_events(limit=2, before=second.older)

    assert (ids(first), ids(second), ids(last)) == (newest_first[:2], newest_first[2:4], newest_first[4:])
    assert last.older is None


def test_event_filters_combine_and_text_is_matched_ignoring_case_and_wildcards(store):
    linked = record(store, "a", title="Checkout DOWN, see OPS-42", case="OPS-42")
    quiet = record(store, "b", title="checkout slow")
    other = record(store, "c", title="100% disk_full", source="pagerduty", kind="incident.triggered")

    assert ids(store.page_events(outcome="linked")) == [linked]
    assert ids(store.page_events(outcome="not-linked")) == [other, quiet]
    assert ids(store.page_events(text="checkout")) == [quiet, linked]
    assert ids(store.page_events(text="CHECKOUT", outcome="not-linked")) == [quiet]
    assert ids(store.page_events(source="pagerduty", kind="incident.triggered")) == [other]
    # A kind as a sender or an operator writes it finds the canonical kind it is stored as.
    assert ids(store.page_events(kind="Incident.Triggered")) == [other]
    # % and _ are text to look for, not LIKE wildcards.
    assert ids(store.page_events(text="0% d")) == [other]
    assert ids(store.page_events(text="100_")) == []
    assert ids(store.page_events(text="%")) == [other]
    assert ids(store.page_events(text="k_full")) == [other]


def test_the_duplicate_conflict_outcome_finds_a_key_repeated_with_other_content(store):
    first = record(store, "same-key", title="first", digest="a" * 64)
    repeat = record(store, "same-key", title="changed", digest="b" * 64)
    record(store, "other-key", title="alone")

    assert ids(store.page_events(outcome="duplicate-conflict")) == [repeat]
    assert first != repeat


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        ("linked", ["linked", "conflict"]),
        ("not-linked", ["quiet", "first"]),
        ("unrecognised", ["unreadable"]),
        ("rejected", ["refused"]),
        ("duplicate-conflict", ["conflict"]),
        ("deferred", ["waiting"]),
    ],
)
def test_the_page_and_the_cli_select_each_outcome_alike(store, outcome, expected):
    stored = {
        "linked": record(store, "a", case="OPS-1"),
        "quiet": record(store, "b"),
        "unreadable": record(store, "c", kind="unrecognised"),
        "refused": record(store, "d", kind="rejected"),
        "first": record(store, "e", digest="a" * 64),
        "conflict": record(store, "e", digest="b" * 64, case="OPS-2"),
        "waiting": record(store, "f", deferred=True),
    }
    want = sorted((stored[name] for name in expected), reverse=True)

    assert ids(store.page_events(outcome=outcome)) == want
    assert [row["id"] for row in store.find_events(outcome=outcome)] == want


def test_the_outcomes_are_the_six_docs_operations_documents():
    table = section(OPERATIONS, "The operator's questions").split("| outcome | the event |")[1]
    documented = tuple(re.findall(r"^\| `([a-z-]+)` \|", table, flags=re.MULTILINE))

    assert EVENT_OUTCOMES == documented
    assert documented == ("linked", "not-linked", "deferred", "unrecognised", "rejected", "duplicate-conflict")


def test_a_filtered_page_looks_at_a_bounded_window_and_says_how_far_it_looked(store):
    match = record(store, "old", title="needle")
    for n in range(9):
        record(store, f"hay{n}", title="hay")

    near = store.page_events(text="needle", window=4)
    further = store.page_events(text="needle", window=4, before=near.older)
    found = store.page_events(text="needle", window=4, before=further.older)

    assert (ids(near), near.searched_to) == ([], match + 6)
    assert (ids(further), further.searched_to) == ([], match + 2)
    assert (ids(found), found.older, found.searched_to) == ([match], None, None)


@pytest.mark.parametrize(
    "text",
    ["'; DROP TABLE events; --", "\\", '"', "[a-z]*", "ü€😀", "\t\n", "x" * 255, "%_%", "\\%", "NULL"],
)
def test_any_text_an_operator_types_is_searched_as_text(store, text):
    found = record(store, "a", title=f"before {text} after")
    record(store, "b", title="something else")

    assert ids(store.page_events(text=text)) == [found]
    assert ids(store.page_events(kind=text, source=text)) == []


@pytest.mark.parametrize(
    ("field", "value"), [("text", "a\x00b"), ("text", "x" * 256), ("kind", "\x00"), ("source", "s" * 300)]
)
def test_filters_no_store_can_hold_are_a_bad_request_not_a_database_error(store, field, value):
    with pytest.raises(BadRequestError, match=field):
        store.page_events(**{field: value})


def test_an_unknown_outcome_is_a_bad_request(store):
    for read in (store.page_events, store.find_events):
        with pytest.raises(
            BadRequestError, match="outcome must be one of linked, not-linked, deferred, unrecognised, rejected"
        ):
            read(outcome="matched_nothing")


def test_an_empty_store_has_an_empty_first_page_with_or_without_filters(store):
    assert store.page_events().events == []
    assert store.page_events(text="x").events == []
    assert store.event_bounds() == (None, None)


def test_link_pages_by_state_follow_the_next_attempt_time_and_never_repeat_a_link(store):
    record(store, "delivered", case="OPS-99")
    [job] = store.claim("w", 1, lease=30)
    store.delivered(job, "dd-1", existed=False)
    # Several links share a next attempt time: the id breaks the tie, so no page repeats or skips one.
    for n in range(7):
        record(store, f"e{n}", case=f"OPS-{n}", now=1000.0 + n % 3)

    seen, cursor = [], None
    while True:
        page = store.page_links(state="pending", limit=3, after=cursor)
        seen += [(link["id"], link["state"]) for link in page.links]
        cursor = page.next
        if cursor is None:
            break

    assert {state for _, state in seen} == {"pending"}
    assert len(seen) == len({link_id for link_id, _ in seen})
    assert len(seen) == store.count_links()["pending"]


def test_link_pages_without_a_state_go_newest_first_by_id(store):
    for n in range(5):
        record(store, f"e{n}", case=f"OPS-{n}")

    first = store.page_links(limit=3)
    second = store.page_links(limit=3, after=first.next)

    link_ids = [link["id"] for link in first.links + second.links]
    assert link_ids == sorted(link_ids, reverse=True)
    assert len(link_ids) == 5
    assert second.next is None


@pytest.mark.parametrize(
    ("state", "cursor"), [(None, "x"), (None, "1.5"), ("dead", "abc_1"), ("dead", "1_x"), ("dead", "7")]
)
def test_a_link_cursor_caselink_did_not_write_is_a_bad_request(store, state, cursor):
    with pytest.raises(BadRequestError, match="cursor"):
        store.page_links(state=state, after=cursor)


def test_delivery_errors_are_the_failing_links_latest_first(store):
    record(store, "a", case="OPS-1")
    record(store, "b", case="OPS-2")
    record(store, "c", case="OPS-3")
    jobs = store.claim("w", 3, lease=30)
    store.dead(jobs[0], "case OPS-1 does not exist", status=404, now=2000.0)
    store.retry_later(jobs[1], "Datadog answered 503", at=9e9, status=503, now=3000.0)
    store.delivered(jobs[2], "dd-3", existed=False)

    errors = store.delivery_errors()

    assert [(link["child"], link["state"], link["last_status"]) for link in errors] == [
        ("CASE:OPS-2", "pending", 503),
        ("CASE:OPS-1", "dead", 404),
    ]


@pytest.mark.parametrize(
    "read",
    [
        lambda store: store.page_events(),
        lambda store: store.page_events(before=5),
        lambda store: store.page_events(text="needle", outcome="linked", source="datadog", kind="x"),
        lambda store: store.page_events(outcome="linked", before=5),
        lambda store: store.page_links(),
        lambda store: store.page_links(after="5"),
        lambda store: store.page_links(state="dead"),
        lambda store: store.page_links(state="delivered", after="1000.5_7"),
        lambda store: store.event_bounds(),
    ],
)
def test_the_status_pages_reads_walk_an_index_and_never_scan_a_table(sqlite_store, read):
    for n in range(3):
        record(sqlite_store, f"e{n}", case=f"OPS-{n}")

    plans = query_plans(sqlite_store, lambda: read(sqlite_store))

    assert plans
    for statement, steps in plans:
        # Rows come in the order asked for, from an index or the primary key, never sorted afterwards.
        assert not [step for step in steps if "TEMP B-TREE" in step], (statement, steps)
        # A SCAN is only a walk of the primary key that LIMIT stops: nothing filters what it walks.
        if any(step.startswith("SCAN") and "COVERING INDEX" not in step for step in steps):
            assert "WHERE" not in statement, (statement, steps)
            assert "LIMIT" in statement, (statement, steps)


def test_events_are_found_by_source_kind_outcome_and_window(store):
    linked = receive(store, "a", NOW - DAY)
    quiet = receive(store, "b", NOW - 2 * DAY, unmatched())
    [unreadable] = store.record(
        [(Event(source="datadog", kind="unrecognised", dedup_key="c", problem="not JSON"), Evaluation([]))],
        ruleset="abc",
        dry_run=False,
        now=NOW - 3 * DAY,
    )

    def ids(**filters):
        return [row["id"] for row in store.find_events(**filters)]

    assert ids() == [unreadable.id, quiet, linked]
    assert ids(outcome="linked") == [linked]
    assert ids(outcome="not-linked") == [quiet]
    assert ids(outcome="unrecognised") == [unreadable.id]
    assert ids(outcome="duplicate-conflict") == []
    assert ids(since=NOW - 2.5 * DAY) == [quiet, linked]
    assert ids(kind="unrecognised", source="datadog") == [unreadable.id]
    assert ids(source="pagerduty") == []
    assert ids(limit=1) == [unreadable.id]


def test_an_event_whose_dedup_key_repeated_with_other_content_is_found_as_a_duplicate_conflict(store):
    first = receive(store, "same", NOW - DAY)
    [again] = store.record(
        [(event("same", digest="f" * 64), planning(("r1", causes())))], ruleset="abc", dry_run=False, now=NOW
    )

    found = [row["id"] for row in store.find_events(outcome="duplicate-conflict")]

    assert again.dedup_conflict
    assert found == [again.id]
    assert first not in found


def test_an_events_explain_record_reads_in_full_from_its_stored_rule_set_after_the_rules_changed(store, monkeypatch):
    import json

    import sqlalchemy as sa

    from caselink import traces
    from caselink.rules import parse_rules
    from caselink.schema import events
    from caselink.schema import rule_sets
    from tests.rule_files import generated_rules_text as rules_text
    from tests.test_traces import incident

    ruleset = parse_rules(rules_text(300))
    happened = incident()
    [stored] = store.record([(happened, ruleset.evaluate(happened))], ruleset=ruleset.digest, dry_run=True, now=NOW)
    # The rules change, and this process forgets the old ones: only the rule_sets table has them.
    newer = parse_rules(rules_text(5))
    store.record([(incident(dedup_key="k2"), newer.evaluate(incident("k2")))], ruleset=newer.digest, dry_run=True)
    monkeypatch.setattr(traces, "RULE_SETS", traces.RuleSetCache())

    record = store.get_event(stored.id)

    assert record["rules"] == ruleset.evaluate_linear(happened).trace()
    assert {link["child"] for link in record["links"]} == {"CASE:OPS-7"}
    with store.engine.connect() as connection:
        trace = connection.execute(sa.select(events.c.trace).where(events.c.id == stored.id)).scalar_one()
        kept = connection.execute(sa.select(rule_sets.c.digest, rule_sets.c.text)).all()
    assert len(json.dumps(trace)) < 2048
    assert sorted(kept) == sorted([(ruleset.digest, ruleset.text), (newer.digest, newer.text)])
