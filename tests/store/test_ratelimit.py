"""The shared rate-limit budget: periods every process counts in, limits every process learns."""

from __future__ import annotations

import threading


def test_a_shared_rate_period_admits_at_most_its_limit_whatever_the_number_of_takers(store):
    taken: list[bool] = []
    barrier = threading.Barrier(6)

    def take() -> None:
        barrier.wait()
        for _ in range(10):
            taken.append(store.take_rate_slot("cases_link_create", 1000, 25))

    threads = [threading.Thread(target=take) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert taken.count(True) == 25
    assert store.take_rate_slot("cases_link_create", 1001, 25) is True
    assert store.take_rate_slot("another_limit", 1000, 1) is True
    assert store.take_rate_slot("another_limit", 1000, 1) is False


def test_a_rate_limit_learned_by_one_process_is_known_to_the_others(store):
    assert store.known_rate_limit("POST /api/v2/cases/link") is None

    store.learn_rate_limit("POST /api/v2/cases/link", "cases_link_create", 50, 1.0)

    assert store.known_rate_limit("POST /api/v2/cases/link") == ("cases_link_create", 50, 1.0)


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
