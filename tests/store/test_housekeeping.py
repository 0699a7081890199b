"""Per-rule statistics and retention, as the store counts and prunes."""

from __future__ import annotations

import threading
from datetime import UTC
from datetime import datetime

from tests.store.builders import DAY
from tests.store.builders import NOW
from tests.store.builders import causes
from tests.store.builders import planning
from tests.store.builders import receive
from tests.store.builders import set_link_state
from tests.store.builders import stored_ids
from tests.store.builders import unmatched


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


def test_pruning_never_deletes_an_event_not_yet_counted(store):
    receive(store, "a", NOW - 40 * DAY)
    set_link_state(store, "delivered")

    batch = store.prune_events(NOW - 30 * DAY)

    assert (batch.deleted, batch.done) == (0, True)
    assert len(stored_ids(store)) == 1
