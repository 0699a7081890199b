"""Per-rule statistics and retention on SQLite and PostgreSQL: counted once, pruned safely, kept."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from caselink import migrations
from caselink.events import Event
from caselink.housekeeping import Housekeeper
from caselink.housekeeping import Report
from caselink.rules import Evaluation
from caselink.rules import RuleOutcome
from caselink.schema import events
from caselink.schema import links
from caselink.store import Store
from tests.test_store import causes
from tests.test_store import event
from tests.test_store import planning

DAY = 86400.0
NOW = 1_780_000_000.0


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


def test_rule_stats_count_matches_and_planned_links_per_rule_all_time_and_in_a_window(store):
    receive(store, "a", NOW - 10 * DAY, planning(("r1", causes()), ("r2", causes(case="OPS-7"))))
    receive(store, "b", NOW - 2 * DAY, planning(("r1", causes(case="OPS-8"))))
    receive(store, "c", NOW - 1 * DAY, unmatched("r2"))

    assert store.count_rule_stats(now=NOW, settle=0) == 3

    ever = store.rule_stats(None)
    assert (ever["r1"].matched, ever["r1"].links_planned) == (2, 2)
    assert (ever["r2"].matched, ever["r2"].links_planned) == (1, 1)
    assert ever["r1"].last_matched_at == datetime.fromtimestamp(NOW - 2 * DAY, UTC)
    recent = store.rule_stats(datetime.fromtimestamp(NOW - 5 * DAY, UTC))
    assert (recent["r1"].matched, recent["r1"].links_planned) == (1, 1)
    assert "r2" not in recent


def test_counting_again_counts_nothing_twice(store):
    receive(store, "a", NOW - DAY)
    assert store.count_rule_stats(now=NOW, settle=0) == 1

    assert store.count_rule_stats(now=NOW, settle=0) == 0
    receive(store, "b", NOW - DAY / 2)
    assert store.count_rule_stats(now=NOW, settle=0) == 1

    assert store.rule_stats(None)["r1"].matched == 2


def test_concurrent_counters_count_each_event_once(store):
    for index in range(60):
        receive(store, f"e{index}", NOW - DAY + index)
    errors: list[BaseException] = []

    def count() -> None:
        try:
            while store.count_rule_stats(limit=7, now=NOW, settle=0) or store.count_rule_stats(
                limit=7, now=NOW, settle=0
            ):
                pass
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert store.rule_stats(None)["r1"].matched == 60


def test_an_event_is_counted_only_once_it_has_settled(store):
    receive(store, "a", NOW - 5)

    assert store.count_rule_stats(now=NOW, settle=30) == 0
    assert store.count_rule_stats(now=NOW + 30, settle=30) == 1


def test_a_rules_delivered_links_are_counted_from_the_links_themselves(store):
    receive(store, "a", NOW - DAY, planning(("r1", causes()), ("r2", causes())))
    receive(store, "b", NOW - DAY, planning(("r1", causes(case="OPS-9"))))
    store.count_rule_stats(now=NOW, settle=0)
    [job, _] = store.claim("w", 2, lease=60, now=NOW)
    store.delivered(job, "dd-1", existed=False, now=NOW)

    stats = store.rule_stats(None)

    assert (stats["r1"].links_planned, stats["r1"].links_delivered) == (2, 1)
    assert (stats["r2"].links_planned, stats["r2"].links_delivered) == (1, 1)
    assert "r1" not in store.rule_stats(datetime.fromtimestamp(NOW + 1, UTC))


def test_pruning_deletes_events_past_retention_and_keeps_their_statistics_and_links(store):
    old = [receive(store, f"old{index}", NOW - 40 * DAY + index) for index in range(5)]
    young = receive(store, "young", NOW - DAY)
    set_link_state(store, "delivered")
    keeper = Housekeeper(store, retention=30 * DAY, clock=lambda: NOW)
    keeper.prune_batch = 2  # several batches

    report = keeper.round()

    assert (report.counted, report.deleted, report.kept) == (6, 5, 0)
    assert stored_ids(store) == [young]
    assert old[0] < young
    assert store.rule_stats(None)["r1"].matched == 6
    assert link_states(store) == ["delivered"]


@pytest.mark.parametrize("state", ["pending", "claimed"])
def test_pruning_keeps_an_event_whose_link_is_not_final(store, state):
    waiting = receive(store, "waiting", NOW - 40 * DAY, planning(("r1", causes(case="OPS-1"))))
    set_link_state(store, state)
    receive(store, "done", NOW - 40 * DAY + 1, planning(("r1", causes(case="OPS-2"))))
    with store.engine.begin() as connection:
        connection.execute(links.update().where(links.c.child_ref == "OPS-2").values(state="dead"))
    receive(store, "nothing", NOW - 40 * DAY + 2, unmatched())
    young = receive(store, "young", NOW - DAY, unmatched())

    report = Housekeeper(store, retention=30 * DAY, clock=lambda: NOW).round()

    assert (report.deleted, report.kept) == (2, 1)
    assert stored_ids(store) == [waiting, young]
    assert sorted(link_states(store)) == sorted([state, "dead"])


@pytest.mark.parametrize("state", ["dry_run", "delivered", "dead", "merged"])
def test_pruning_deletes_an_event_whose_links_are_final(store, state):
    receive(store, "a", NOW - 40 * DAY, dry_run=state == "dry_run")
    set_link_state(store, state)
    young = receive(store, "young", NOW - DAY, unmatched())

    report = Housekeeper(store, retention=30 * DAY, clock=lambda: NOW).round()

    assert report.deleted == 1
    assert stored_ids(store) == [young]
    assert link_states(store) == [state]


def test_pruning_never_deletes_an_event_not_yet_counted(store):
    receive(store, "a", NOW - 40 * DAY)
    set_link_state(store, "delivered")

    batch = store.prune_events(NOW - 30 * DAY)

    assert (batch.deleted, batch.done) == (0, True)
    assert len(stored_ids(store)) == 1


def test_a_dry_run_of_pruning_counts_what_would_go_and_changes_nothing(store):
    receive(store, "a", NOW - 40 * DAY)
    set_link_state(store, "delivered")
    receive(store, "young", NOW - DAY, unmatched())
    store.count_rule_stats(now=NOW, settle=0)

    report = Housekeeper(store, retention=30 * DAY, clock=lambda: NOW).round(dry_run=True)

    assert report.deleted == 1
    assert len(stored_ids(store)) == 2


def test_a_redelivered_event_after_pruning_plans_no_second_link(store):
    receive(store, "a", NOW - 40 * DAY)
    set_link_state(store, "delivered")
    Housekeeper(store, retention=30 * DAY, clock=lambda: NOW).round()

    receive(store, "a", NOW)

    assert link_states(store) == ["delivered"]


def test_the_housekeeper_runs_in_the_background_until_stopped(store):
    receive(store, "a", time.time() - 40 * DAY)
    set_link_state(store, "delivered")
    young = receive(store, "young", time.time() - DAY, unmatched())
    keeper = Housekeeper(store, retention=30 * DAY, interval=0.05)

    keeper.start()
    deadline = time.monotonic() + 10
    while stored_ids(store) != [young] and time.monotonic() < deadline:
        time.sleep(0.02)
    keeper.stop()

    assert stored_ids(store) == [young]
    assert store.rule_stats(None)["r1"].matched == 1


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


def test_events_that_arrive_after_everything_was_pruned_are_counted(store):
    for index in range(3):
        receive(store, f"old{index}", NOW - 40 * DAY + index)
    set_link_state(store, "delivered")
    Housekeeper(store, retention=30 * DAY, clock=lambda: NOW).round()

    receive(store, "new", NOW)
    report = Housekeeper(store, retention=30 * DAY, clock=lambda: NOW + 60).round()

    assert report.counted == 1
    assert store.rule_stats(None)["r1"].matched == 4


def test_an_event_whose_dedup_key_repeated_with_other_content_is_found_as_a_duplicate_conflict(store):
    first = receive(store, "same", NOW - DAY)
    [again] = store.record(
        [(event("same", digest="f" * 64), planning(("r1", causes())))], ruleset="abc", dry_run=False, now=NOW
    )

    found = [row["id"] for row in store.find_events(outcome="duplicate-conflict")]

    assert again.dedup_conflict
    assert found == [again.id]
    assert first not in found



def test_a_round_that_only_keeps_events_logs_at_debug_and_a_deletion_at_info(store, caplog, monkeypatch):
    # A dry-run worker keeps the same events every few seconds: that is not news at INFO.
    rounds = iter([Report(kept=3), Report(deleted=2, kept=3), Report(kept=3)])
    keeper = Housekeeper(store, retention=30 * DAY, interval=0.01)
    monkeypatch.setattr(keeper, "round", lambda: next(rounds, Report()))
    caplog.set_level(logging.DEBUG, logger="caselink")

    keeper.start()
    deadline = time.monotonic() + 10
    while sum(r.message == "events pruned" for r in caplog.records) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    keeper.stop()

    pruned = [(r.levelno, r.fields["deleted"]) for r in caplog.records if r.message == "events pruned"]
    assert pruned == [(logging.DEBUG, 0), (logging.INFO, 2), (logging.DEBUG, 0)]
