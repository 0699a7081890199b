"""The store's reads for the status page, on SQLite and on PostgreSQL: cursors, filters, bounded searches."""

from __future__ import annotations

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
from caselink.store import Store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request, tmp_path: Path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url").replace("postgresql://", "postgresql+psycopg://", 1)
    built = Store(url)
    migrations.upgrade(built.engine)
    yield built
    built.dispose()


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
) -> int:
    links = [link_to(case)] if case else []
    event = Event(source=source, kind=kind, dedup_key=key, title=title, digest=digest)
    evaluation = Evaluation([RuleOutcome("r", "matched", links=links)] if links else [])
    [stored] = store.record([(event, evaluation)], ruleset="x", dry_run=False, now=now)
    return stored.id


def ids(page) -> list[int]:
    return [event["id"] for event in page.events]


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
    rejected = record(store, "d", title="bad signature", kind="rejected")

    assert ids(store.page_events(outcome="linked")) == [linked]
    assert ids(store.page_events(outcome="matched_nothing")) == [other, quiet]
    assert ids(store.page_events(outcome="rejected")) == [rejected]
    assert ids(store.page_events(text="checkout")) == [quiet, linked]
    assert ids(store.page_events(text="CHECKOUT", outcome="matched_nothing")) == [quiet]
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

    assert ids(store.page_events(outcome="duplicate_conflict")) == [repeat]
    assert first != repeat


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
    with pytest.raises(BadRequestError, match="outcome must be one of linked, matched_nothing, rejected, dup"):
        store.page_events(outcome="duplicate")


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


def test_rate_budgets_count_the_current_period_of_every_limit_learned(store):
    store.learn_rate_limit("POST /api/v2/cases/link", "cases_link_create", 100, 10.0)
    store.learn_rate_limit("GET /api/v2/cases/link", "cases_link_read", 50, 60.0)
    store.learn_rate_limit("GET /api/v2/cases/{key}", "cases_link_read", 50, 60.0)
    now = 1_000_005.0
    for _ in range(3):
        store.take_rate_slot("cases_link_create", int(now // 10), 100)
    store.take_rate_slot("cases_link_create", int(now // 10) - 1, 100)  # an earlier period: not counted

    budgets = store.rate_budgets(now=now)

    assert budgets == [
        {"name": "cases_link_create", "limit": 100, "period": 10.0, "used": 3, "resets_in": 5.0,
         "endpoints": ["POST /api/v2/cases/link"]},
        {"name": "cases_link_read", "limit": 50, "period": 60.0, "used": 0, "resets_in": 15.0,
         "endpoints": ["GET /api/v2/cases/link", "GET /api/v2/cases/{key}"]},
    ]  # fmt: skip


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


@pytest.mark.parametrize(
    "read",
    [
        lambda store: store.page_events(),
        lambda store: store.page_events(before=5),
        lambda store: store.page_events(text="needle", outcome="linked", source="datadog", kind="x"),
        lambda store: store.page_events(outcome="rejected", before=5),
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
