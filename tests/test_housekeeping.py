"""Per-rule statistics and retention on SQLite and PostgreSQL: counted once, pruned safely, kept."""

from __future__ import annotations

import logging
import time

import pytest

from caselink.housekeeping import Housekeeper
from caselink.housekeeping import Report
from caselink.schema import links
from tests.store.builders import DAY
from tests.store.builders import NOW
from tests.store.builders import causes
from tests.store.builders import link_states
from tests.store.builders import planning
from tests.store.builders import receive
from tests.store.builders import set_link_state
from tests.store.builders import stored_ids
from tests.store.builders import unmatched


@pytest.fixture
def store(each_store):
    return each_store


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


def test_events_that_arrive_after_everything_was_pruned_are_counted(store):
    for index in range(3):
        receive(store, f"old{index}", NOW - 40 * DAY + index)
    set_link_state(store, "delivered")
    Housekeeper(store, retention=30 * DAY, clock=lambda: NOW).round()

    receive(store, "new", NOW)
    report = Housekeeper(store, retention=30 * DAY, clock=lambda: NOW + 60).round()

    assert report.counted == 1
    assert store.rule_stats(None)["r1"].matched == 4


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


def test_a_round_evaluates_the_deferred_events_in_batches_before_it_counts_them(store):
    from caselink.rules import Evaluation
    from tests.store.builders import event

    ids = [
        stored.id
        for stored in store.record(
            [(event(f"late{n}"), Evaluation.deferral("later")) for n in range(5)],
            ruleset="x",
            dry_run=False,
            now=NOW - DAY,
        )
    ]
    asked: list[int] = []

    def evaluate_deferred(limit: int) -> int:
        asked.append(limit)
        rows = store.deferred_events(limit)
        store.settle_deferred(
            [(row["id"], event(row["dedup_key"]), planning(("r1", causes()))) for row in rows], dry_run=False
        )
        return len(rows)

    keeper = Housekeeper(store, retention=30 * DAY, clock=lambda: NOW, evaluate_deferred=evaluate_deferred)
    keeper.evaluate_batch = 2
    keeper.pause = 0.0

    report = keeper.round()

    assert (report.evaluated, report.counted) == (5, 5)
    assert asked == [2, 2, 2]
    assert store.deferred_events() == []
    assert store.rule_stats(None)["r1"].matched == 5
    assert stored_ids(store) == ids
