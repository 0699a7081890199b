"""The webhook path on SQLite and on PostgreSQL: group commit, deduplication, link planning."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import sqlalchemy as sa

from caselink import migrations
from caselink.errors import BadRequestError
from caselink.store import Store
from tests.store.builders import causes
from tests.store.builders import event
from tests.store.builders import event_ids
from tests.store.builders import planning


def test_an_event_is_stored_once_per_source_and_dedup_key(store):
    first = store.record([(event(), planning(("r1", causes())))], ruleset="abc", dry_run=False)
    again = store.record([(event(), planning(("r1", causes())))], ruleset="abc", dry_run=False)

    assert [e.duplicate for e in first] == [False]
    assert [e.duplicate for e in again] == [True]
    assert again[0].id == first[0].id
    assert len(store.list_events()) == 1
    assert len(store.list_links()) == 1


def test_one_batch_of_new_stored_and_repeated_events_gets_each_its_own_outcome(store):
    [stored] = store.record([(event("old"), planning(("r1", causes())))], ruleset="x", dry_run=False)
    items = [
        (event("new-1"), planning(("r1", causes()))),
        (event("old"), planning()),
        (event("twice"), planning(("r1", causes()), ("r2", causes(case="OPS-43")))),
        (event("twice"), planning()),
        (event("new-2"), planning()),
    ]

    recorded = store.record(items, ruleset="x", dry_run=False)

    outcomes = [(r.duplicate, r.links_planned) for r in recorded]
    assert outcomes == [(False, 1), (True, 1), (False, 2), (True, 2), (False, 0)]
    assert recorded[1].id == stored.id
    assert recorded[3].id == recorded[2].id
    ids = event_ids(store)
    assert [r.id for r in recorded] == [ids[k] for k in ("new-1", "old", "twice", "twice", "new-2")]
    assert len(ids) == 4


def test_a_webhook_of_more_events_than_one_statement_holds_is_stored_whole(store, monkeypatch):
    import caselink.store.ingest

    monkeypatch.setattr(caselink.store.ingest, "_ROWS_PER_INSERT", 3)
    store.record([(event("k4"), planning())], ruleset="x", dry_run=False)

    recorded = store.record([(event(f"k{n}"), planning()) for n in range(8)], ruleset="x", dry_run=False)

    assert [r.duplicate for r in recorded] == [n == 4 for n in range(8)]
    ids = event_ids(store)
    assert [r.id for r in recorded] == [ids[f"k{n}"] for n in range(8)]


def test_concurrent_webhooks_in_one_transaction_each_get_their_own_event_ids(store):
    store.expect_concurrent_writers(6)
    results: dict[str, list] = {}
    barrier = threading.Barrier(6)

    def send(key: str) -> None:
        barrier.wait()
        items = [(event(key), planning()), (event("shared"), planning())]
        results[key] = store.record(items, ruleset="x", dry_run=False)

    threads = [threading.Thread(target=send, args=(f"w{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    ids = event_ids(store)
    assert {key: recorded[0].id for key, recorded in results.items()} == {key: ids[key] for key in results}
    assert all(not recorded[0].duplicate for recorded in results.values())
    assert sorted(recorded[1].duplicate for recorded in results.values()) == [False] + [True] * 5
    assert {recorded[1].id for recorded in results.values()} == {ids["shared"]}


def test_the_same_link_planned_by_several_events_and_rules_is_one_link(store):
    store.record([(event("a"), planning(("r1", causes()), ("r2", causes())))], ruleset="x", dry_run=False)
    store.record([(event("b"), planning(("r1", causes())))], ruleset="x", dry_run=False)

    [link] = store.list_links()
    assert link["state"] == "pending"
    assert sorted(item["rule"] for item in store.get_event(1)["links"]) == ["r1", "r2"]


def test_a_live_plan_wakes_a_link_only_dry_run_rules_asked_for(store):
    store.record([(event("a"), planning(("shadow", causes()), dry_run=True))], ruleset="x", dry_run=False)
    assert store.list_links()[0]["state"] == "dry_run"

    store.record([(event("b"), planning(("live", causes())))], ruleset="x", dry_run=False)

    assert store.list_links()[0]["state"] == "pending"


def test_global_dry_run_plans_links_that_are_never_claimed(store):
    store.record([(event(), planning(("r1", causes())))], ruleset="x", dry_run=True)

    assert store.claim("w", 10, lease=30) == []
    assert store.list_links()[0]["state"] == "dry_run"


def test_concurrent_writes_share_transactions_and_each_request_gets_its_own_result():
    from caselink.store.ingest import _GroupCommit

    batches: list[list[int]] = []

    def run(batch: list[int]) -> list[int]:
        batches.append(list(batch))
        time.sleep(0.005)  # a commit takes a while; requests queue behind it
        return [work * 10 for work in batch]

    group = _GroupCommit(run)  # type: ignore[arg-type]
    results: dict[int, int] = {}

    def submit(work: int) -> None:
        results[work] = group.submit(work)  # type: ignore[arg-type]

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == {n: n * 10 for n in range(40)}
    assert sorted(work for batch in batches for work in batch) == list(range(40))
    assert len(batches) < 40  # some requests rode on another's transaction


def test_a_failed_transaction_fails_every_request_that_rode_on_it():
    from caselink.errors import StoreUnavailableError
    from caselink.store.ingest import _GroupCommit

    def run(batch: list[int]) -> list[int]:
        time.sleep(0.005)
        raise StoreUnavailableError("the database is unavailable: disk I/O error")

    group = _GroupCommit(run)  # type: ignore[arg-type]
    errors: list[Exception] = []

    def submit(work: int) -> None:
        try:
            group.submit(work)  # type: ignore[arg-type]
        except StoreUnavailableError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(errors) == 10
    assert all(error.status_code == 503 for error in errors)


def test_a_live_plan_wakes_a_dry_run_link_even_after_the_process_has_planned_it_twice(store):
    for key in ("a", "b"):
        store.record([(event(key), planning(("shadow", causes()), dry_run=True))], ruleset="x", dry_run=False)

    store.record([(event("c"), planning(("live", causes())))], ruleset="x", dry_run=False)
    store.record([(event("d"), planning(("live", causes())))], ruleset="x", dry_run=False)

    [link] = store.list_links()
    assert link["state"] == "pending"


def test_a_link_removed_by_hand_is_planned_again_once_the_process_forgets_it(store):
    import sqlalchemy as sa

    # A second here, a minute in production: long enough that a busy machine does not make the
    # process forget between the two records below.
    store._known_links.ttl = 1.0  # noqa: SLF001
    store.record([(event("a"), planning(("r1", causes())))], ruleset="x", dry_run=False)
    with store.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM links"))

    store.record([(event("b"), planning(("r1", causes())))], ruleset="x", dry_run=False)
    assert store.list_links() == []  # remembered as planned: the INSERT is skipped
    time.sleep(1.1)
    store.record([(event("c"), planning(("r1", causes())))], ruleset="x", dry_run=False)

    [link] = store.list_links()
    assert link["state"] == "pending"


def test_a_busy_process_commits_concurrent_writes_together():
    from caselink.store.ingest import _GroupCommit

    batches: list[list[int]] = []
    group = _GroupCommit(lambda batch: batches.append(list(batch)) or [work for work in batch])  # type: ignore[arg-type]
    group.submit(-1)  # the process has just committed: it is busy
    barrier = threading.Barrier(4)

    def submit(work: int) -> None:
        barrier.wait()
        group.submit(work)  # type: ignore[arg-type]

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(len(batch) for batch in batches[1:]) != [1, 1, 1, 1]


def test_a_process_that_takes_one_request_at_a_time_stops_waiting_for_company():
    from caselink.store.ingest import _GroupCommit

    group = _GroupCommit(lambda batch: list(batch))  # type: ignore[arg-type]
    waits: list[float | None] = []
    wait = group._joined.wait
    group._joined.wait = lambda timeout=None: waits.append(timeout) or wait(timeout)  # type: ignore[method-assign]

    for work in range(4):  # the first finds the process idle; the next three linger alone
        group.submit(work)  # type: ignore[arg-type]
    lingered = len(waits)
    for work in range(10):
        group.submit(work)  # type: ignore[arg-type]

    assert lingered >= 3
    assert len(waits) == lingered


def test_a_process_with_one_request_thread_never_waits_for_company(store):
    store.expect_concurrent_writers(1)
    waits: list[float | None] = []
    wait = store._group._joined.wait
    store._group._joined.wait = lambda timeout=None: waits.append(timeout) or wait(timeout)

    for key in ("a", "b", "c"):
        store.record([(event(key), planning(("r1", causes())))], ruleset="x", dry_run=False)

    assert waits == []
    assert len(store.list_events()) == 3


def test_a_batch_that_plans_only_links_stored_already_is_one_statement_that_commits_itself(tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    migrations.upgrade(store.engine)
    store.record([(event("a"), planning(("r1", causes())))], ruleset="x", dry_run=False)
    statements: list[str] = []
    store._ingest_connection.driver_connection.set_trace_callback(statements.append)  # noqa: SLF001

    store.record([(event("b"), planning(("r1", causes())))], ruleset="x", dry_run=False)
    alone = list(statements)
    statements.clear()
    store.record([(event("c"), planning(("r1", causes(case="OPS-43"))))], ruleset="x", dry_run=False)

    assert len(alone) == 1
    assert alone[0].startswith("INSERT INTO events")
    assert statements[0] == "BEGIN IMMEDIATE"  # a link not seen before: one transaction with its event
    assert [s.split()[2] for s in statements[1:3]] == ["events", "links"]
    assert statements[-1] == "COMMIT"
    assert set(event_ids(store)) == {"a", "b", "c"}  # committed: another connection reads them
    assert len(store.list_links()) == 2
    store.dispose()


def test_a_batch_of_as_many_writes_as_the_process_serves_now_commits_without_waiting_more():
    from caselink.store.ingest import _GroupCommit

    batches: list[list[int]] = []
    group = _GroupCommit(lambda batch: batches.append(list(batch)) or [work for work in batch])  # type: ignore[arg-type]
    group.linger = 5.0  # would show as a wait of seconds
    group.busy_within = 60.0  # the process counts as busy: a leader lingers
    group.company = lambda: 2  # two connections, whatever the thread count
    group.submit(-1)  # it has just committed
    barrier = threading.Barrier(2)

    def submit(work: int) -> None:
        barrier.wait()
        group.submit(work)  # type: ignore[arg-type]

    started = time.monotonic()
    threads = [threading.Thread(target=submit, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert time.monotonic() - started < 2.5
    assert [sorted(batch) for batch in batches[1:]] == [[0, 1]]


def test_a_webhook_the_database_cannot_store_fails_alone_and_as_the_senders_fault(store):

    # What each store refuses: a lone surrogate (neither encodes it), NUL (PostgreSQL's text and jsonb).
    unstorable = ["\ud800"] + (["\x00"] if store.dialect == "postgresql" else [])
    store.expect_concurrent_writers(10)
    failures: dict[str, list[Exception]] = {"good": [], "bad": []}
    stored: list[int] = []

    def send(sender: int, bad: bool) -> None:
        for n in range(25):
            title = f"see OPS-{n}" + (unstorable[n % len(unstorable)] if bad else "")
            try:
                recorded = store.record(
                    [(event(f"{sender}-{n}", title=title), planning(("r", causes())))], ruleset="x", dry_run=False
                )
                stored.append(recorded[0].id)
            except Exception as exc:
                failures["bad" if bad else "good"].append(exc)

    threads = [threading.Thread(target=send, args=(sender, sender < 2)) for sender in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures["good"] == []
    assert len(failures["bad"]) == 50
    assert {(type(error), error.detail["reason"]) for error in failures["bad"]} == {(BadRequestError, "unstorable")}
    assert len(set(stored)) == 200 == len(event_ids(store))


def test_a_dedup_key_repeated_with_other_content_is_a_new_event_and_a_retry_of_either_changes_nothing(store):
    [first] = store.record([(event("k"), planning(("r1", causes())))], ruleset="x", dry_run=False)
    [other] = store.record(
        [(event("k", title="see OPS-42, now worse", payload={"id": "k", "v": 2}), planning(("r1", causes())))],
        ruleset="x",
        dry_run=False,
    )
    retries = store.record(
        [
            (event("k"), planning(("r1", causes()))),
            (event("k", title="see OPS-42, now worse", payload={"id": "k", "v": 2}), planning(("r1", causes()))),
        ],
        ruleset="x",
        dry_run=False,
    )

    assert (first.duplicate, first.dedup_conflict) == (False, False)
    assert (other.duplicate, other.dedup_conflict) == (False, True)
    assert other.id != first.id
    assert [(e.id, e.duplicate, e.dedup_conflict) for e in retries] == [
        (first.id, True, False),
        (other.id, True, False),
    ]
    assert len(store.list_events()) == 2
    assert len(store.list_links()) == 1  # the link both plan is one link


def test_one_batch_holding_a_key_twice_with_other_content_stores_both_and_marks_the_second(store):
    items = [
        (event("k", payload={"id": "k", "v": 1}), planning(("r1", causes()))),
        (event("k", payload={"id": "k", "v": 2}), planning(("r1", causes()))),
        (event("k", payload={"id": "k", "v": 1}), planning(("r1", causes()))),
    ]

    recorded = store.record(items, ruleset="x", dry_run=False)

    assert [(e.duplicate, e.dedup_conflict) for e in recorded] == [(False, False), (False, True), (True, False)]
    assert recorded[2].id == recorded[0].id
    assert len(store.list_events()) == 2
    assert len(store.list_links()) == 1


def test_a_handler_digest_decides_what_counts_as_the_same_content(store):
    [first] = store.record([(event("k", digest="a" * 64), planning())], ruleset="x", dry_run=False)
    [same] = store.record(
        [(event("k", digest="a" * 64, payload={"id": "k", "deliverer": "peer-2"}), planning())],
        ruleset="x",
        dry_run=False,
    )

    assert (same.id, same.duplicate) == (first.id, True)
    assert store.get_event(first.id)["digest"] == "a" * 64


def test_a_retry_of_an_event_stored_before_digests_is_stored_once_more_and_is_no_conflict(store):
    from caselink.schema import events

    [old] = store.record([(event("k"), planning(("r1", causes())))], ruleset="x", dry_run=False)
    with store.engine.begin() as connection:  # as the upgrade that brought digests left the row
        connection.execute(sa.update(events).where(events.c.id == old.id).values(digest=""))

    [retry] = store.record([(event("k"), planning(("r1", causes())))], ruleset="x", dry_run=False)
    [again] = store.record([(event("k"), planning(("r1", causes())))], ruleset="x", dry_run=False)
    record = store.get_event(retry.id)

    assert (retry.duplicate, retry.dedup_conflict) == (False, False)
    assert retry.id != old.id
    assert (again.id, again.duplicate, again.dedup_conflict) == (retry.id, True, False)
    assert record["dedup_conflict"] is False
    assert record["same_key_events"] == [old.id]
    assert f"#{old.id}, which predates content digests" in record["dedup"]
    assert "different content" not in record["dedup"]
    assert len(store.list_links()) == 1


# -- deferred evaluations -------------------------------------------------------------------------


def test_a_deferred_event_is_stored_without_links_and_settled_once_with_its_links(store):
    from caselink.rules import Evaluation

    [stored] = store.record([(event("late"), Evaluation.deferral("not evaluated yet"))], ruleset="x", dry_run=False)
    assert [row["id"] for row in store.deferred_events()] == [stored.id]
    assert store.list_links() == []

    settled = store.settle_deferred([(stored.id, event("late"), planning(("r1", causes())))], dry_run=False)
    again = store.settle_deferred([(stored.id, event("late"), planning(("r2", causes(case="OPS-9"))))], dry_run=False)

    assert (settled, again) == (1, 0)
    assert store.deferred_events() == []
    assert [link["child"] for link in store.list_links()] == ["CASE:OPS-42"]
    assert store.get_event(stored.id)["links_planned"] == 1
    assert [entry["rule"] for entry in store.get_event(stored.id)["rules"]] == ["r1"]


def test_per_rule_statistics_wait_for_a_deferred_event_and_count_it_once_settled(store):
    from caselink.rules import Evaluation

    store.record([(event("first"), planning(("r1", causes())))], ruleset="x", dry_run=False, now=1.0)
    [late] = store.record([(event("late"), Evaluation.deferral("later"))], ruleset="x", dry_run=False, now=2.0)
    store.record([(event("after"), planning(("r1", causes())))], ruleset="x", dry_run=False, now=3.0)

    assert store.count_rule_stats(now=100.0, settle=0.0) == 1
    assert store.count_rule_stats(now=100.0, settle=0.0) == 0

    store.settle_deferred([(late.id, event("late"), planning(("r1", causes())))], dry_run=False)

    assert store.count_rule_stats(now=100.0, settle=0.0) == 2
    assert store.rule_stats(None)["r1"].matched == 3


def test_the_deferred_events_are_found_through_their_partial_index_not_a_scan_of_every_event(tmp_path):
    # SQLite uses a partial index only for a query whose condition is written as the index's is.
    from caselink.store.ingest import DEFERRED_EVENTS

    store = Store(f"sqlite:///{tmp_path / 'plan.db'}")
    migrations.upgrade(store.engine)
    compiled = DEFERRED_EVENTS.limit(50).compile(dialect=store.engine.dialect, compile_kwargs={"literal_binds": True})
    with store.engine.connect() as connection:
        plan = connection.execute(sa.text(f"EXPLAIN QUERY PLAN {compiled}")).all()
    store.dispose()

    assert any("USING INDEX ix_events_deferred" in str(step) for step in plan), plan


def test_a_ref_of_the_longest_length_a_rule_may_find_is_stored_on_both_stores(store):
    # A 256-character ref passed the rules and failed PostgreSQL's varchar(255): a 400 for the
    # whole webhook, and a deferred batch that could never be settled.
    from caselink.events import EntityRef
    from caselink.rules import PlannedLink
    from caselink.rules.model import MAX_REF_CHARACTERS

    longest = PlannedLink(event().entity, "CAUSES", EntityRef.checked("CASE", "AM-" + "9" * (MAX_REF_CHARACTERS - 3)))
    [stored] = store.record([(event("long"), planning(("r1", longest)))], ruleset="x", dry_run=False)

    assert not stored.duplicate
    assert [len(link["child"]) for link in store.list_links()] == [len("CASE:") + MAX_REF_CHARACTERS]
