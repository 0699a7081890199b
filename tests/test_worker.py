"""The delivery worker against the fake Datadog over loopback HTTP: outcomes, retries, pauses, limits."""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from caselink import migrations
from caselink.config import Secret
from caselink.config import Settings
from caselink.datadog import DatadogClient
from caselink.events import EntityRef
from caselink.events import Event
from caselink.ratelimit import RateLimiter
from caselink.rules import Evaluation
from caselink.rules import PlannedLink
from caselink.rules import RuleOutcome
from caselink.store import Store
from caselink.worker import CREDENTIALS_STATE
from caselink.worker import DeliveryWorker
from tests.fake_datadog import BAD_ANSWERS
from tests.fake_datadog import case_uuid
from tests.servers import wait_for


def incident(index: int) -> str:
    return f"00000000-0000-4000-8000-{index:012d}"


@pytest.fixture
def settings(tmp_path: Path, fake_datadog) -> Settings:
    return Settings(
        dd_api_key=Secret(fake_datadog.api_key),
        dd_app_key=Secret(fake_datadog.app_key),
        dd_api_url=fake_datadog.url,
        dd_timeout=0.5,
        database_url=f"sqlite:///{tmp_path / 'worker.db'}",
        worker_poll_interval=0.02,
        delivery_lease=5,
        delivery_backoff_base=0.01,
        delivery_backoff_max=0.05,
        auth_probe_max=0.2,
    )


@pytest.fixture
def store(settings: Settings):
    built = Store(settings.database_url)
    migrations.upgrade(built.engine)
    yield built
    built.dispose()


@pytest.fixture
def make_worker(store: Store, settings: Settings):
    workers = []

    def make(**changes) -> DeliveryWorker:
        effective = replace(settings, **changes)
        worker = DeliveryWorker(store, DatadogClient.from_settings(effective), effective, name=f"w{len(workers)}")
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.stop(grace=2)


def plan(store: Store, *links: PlannedLink, dedup: str | None = None) -> None:
    outcome = RuleOutcome("rule", "matched", links=list(links))
    event = Event("datadog", "incident.created", dedup or f"e{time.monotonic_ns()}")
    store.record([(event, Evaluation([outcome]))], ruleset="test", dry_run=False)


def causes(index: int, case: str = "OPS-42") -> PlannedLink:
    return PlannedLink(EntityRef("INCIDENT", incident(index)), "CAUSES", EntityRef("CASE", case))


def made_by_hand(fake_datadog, link: PlannedLink) -> None:
    """`link` (to a case by key), made in Datadog outside caselink, as `made-by-hand`."""
    attributes = {
        "parent_entity_type": link.parent.type,
        "parent_entity_id": link.parent.id,
        "relationship": link.relationship,
        "child_entity_type": link.child.type,
        "child_entity_id": case_uuid(link.child.id),
    }
    fake_datadog.links.append({"id": "made-by-hand", "type": "link", "attributes": attributes})


def listings(fake_datadog) -> list:
    """The requests that listed a case's links."""
    return [r for r in fake_datadog.requests if r.method == "GET" and r.path == "/api/v2/cases/link"]


def states(store: Store) -> dict[str, int]:
    return {state: count for state, count in store.count_links().items() if count}


def test_a_planned_link_is_resolved_checked_and_created_once(store, make_worker, fake_datadog):
    plan(store, causes(1))

    make_worker().run_until_idle()

    [link] = store.list_links()
    assert (link["state"], link["outcome"], link["child_id"]) == ("delivered", "created", case_uuid("OPS-42"))
    assert link["datadog_link_id"] == fake_datadog.links[0]["id"]
    calls = [(r.method, r.path) for r in fake_datadog.requests]
    assert calls == [
        ("GET", "/api/v2/cases/OPS-42"),
        ("GET", "/api/v2/cases/link"),
        ("POST", "/api/v2/cases/link"),
    ]
    assert fake_datadog.requests[1].query == {
        "entity_type": ["CASE"],
        "entity_id": [case_uuid("OPS-42")],
        "relationship": ["CAUSES"],
    }


def test_a_link_that_already_exists_in_datadog_is_adopted_not_posted(store, make_worker, fake_datadog):
    made_by_hand(fake_datadog, causes(1))
    plan(store, causes(1))

    make_worker().run_until_idle()

    assert fake_datadog.creations() == []
    [link] = store.list_links()
    assert (link["state"], link["outcome"], link["datadog_link_id"]) == ("delivered", "existing", "made-by-hand")


def test_plans_by_case_key_and_by_uuid_end_as_one_link(store, make_worker, fake_datadog):
    plan(store, causes(1))
    plan(store, PlannedLink(EntityRef("INCIDENT", incident(1)), "CAUSES", EntityRef("CASE", case_uuid("OPS-42"))))

    make_worker(worker_concurrency=1).run_until_idle()

    assert len(fake_datadog.creations()) == 1
    assert sorted(link["state"] for link in store.list_links()) == ["delivered", "merged"]


@pytest.mark.parametrize("fault", ["503_after_record", "drop_after_record", "timeout_after_record"])
def test_an_ambiguous_failure_is_checked_before_posting_again(store, make_worker, fake_datadog, fault):
    fake_datadog.configure(fail_ratio=1.0, faults=[fault], fault_on=["create"], timeout_seconds=1.0)
    plan(store, causes(1))
    worker = make_worker()
    worker.run_until_idle()
    assert len(fake_datadog.links) == 1
    fake_datadog.configure(fail_ratio=0.0)

    time.sleep(0.1)
    worker.run_until_idle()

    [link] = store.list_links()
    assert (link["state"], link["outcome"], link["attempts"]) == ("delivered", "existing", 2)
    assert len(fake_datadog.links) == 1


def test_a_failure_before_anything_was_recorded_is_simply_retried(store, make_worker, fake_datadog):
    fake_datadog.configure(next_create=[500, 502])
    plan(store, causes(1))
    worker = make_worker()
    worker.start()

    wait_for(lambda: states(store) == {"delivered": 1}, message="delivery after two 5xx")

    assert store.list_links()[0]["attempts"] == 3
    assert len(fake_datadog.links) == 1


def test_an_unknown_case_key_is_a_dead_letter_and_the_rest_go_on(store, make_worker, fake_datadog):
    plan(store, causes(1, "NOPE-1"), causes(2))

    make_worker().run_until_idle()

    dead = store.list_links(state="dead")
    assert [link["child"] for link in dead] == ["CASE:NOPE-1"]
    assert "NOPE-1 does not exist" in dead[0]["last_error"]
    assert dead[0]["last_status"] == 404
    assert len(store.list_links(state="delivered")) == 1


def test_a_rejected_link_is_dead_for_that_link_only(store, make_worker, fake_datadog):
    fake_datadog.configure(next_create=[400])
    plan(store, causes(1))
    plan(store, causes(2))

    make_worker(worker_concurrency=1).run_until_idle()

    assert states(store) == {"dead": 1, "delivered": 1}
    assert store.list_links(state="dead")[0]["last_status"] == 400


def test_transient_failures_become_a_dead_letter_after_the_attempt_limit(store, make_worker, fake_datadog):
    fake_datadog.configure(next_create=[503] * 10)
    plan(store, causes(1))
    worker = make_worker(delivery_max_attempts=3)
    worker.start()

    wait_for(lambda: states(store) == {"dead": 1}, message="the dead letter")

    [dead] = store.list_links(state="dead")
    assert dead["attempts"] == 3
    assert dead["last_error"].startswith("gave up after 3 attempts")


def test_rejected_credentials_pause_delivery_until_the_keys_work_again(store, make_worker, fake_datadog):
    fake_datadog.configure(reject_keys=True)
    for index in range(5):
        plan(store, causes(index))
    worker = make_worker()
    worker.start()

    wait_for(lambda: store.get_state(CREDENTIALS_STATE), message="the recorded rejection")
    time.sleep(0.5)
    assert worker.pause is not None
    assert states(store) == {"pending": 5}
    assert all(link["attempts"] == 0 for link in store.list_links())
    fake_datadog.configure(reject_keys=False)

    wait_for(lambda: states(store) == {"delivered": 5}, message="delivery after the keys work again")

    assert store.get_state(CREDENTIALS_STATE) is None
    assert worker.pause is None


def test_a_restarted_worker_probes_keys_that_were_rejected_before(store, make_worker, fake_datadog):
    store.set_state(CREDENTIALS_STATE, "rejected: 403")
    worker = make_worker()
    worker.start()

    wait_for(lambda: store.get_state(CREDENTIALS_STATE) is None, message="the rejection cleared")

    assert ("GET", "/api/v2/cases") in [(r.method, r.path) for r in fake_datadog.requests]


def test_the_worker_runs_at_the_rate_limit_and_never_over_it(store, make_worker, fake_datadog):
    fake_datadog.configure(limits={"create": {"limit": 4, "period": 1.0, "name": "cases_link_create"}})
    for index in range(10):
        plan(store, causes(index))
    worker = make_worker(worker_concurrency=3)
    started = time.monotonic()
    worker.start()

    wait_for(lambda: states(store) == {"delivered": 10}, timeout=15, message="all ten links")

    assert fake_datadog.too_many == 0
    assert time.monotonic() - started >= 1.0
    windows: dict[int, int] = {}
    for request in fake_datadog.creations():
        windows[int(request.at)] = windows.get(int(request.at), 0) + 1
    assert max(windows.values()) <= 4


def test_stopping_releases_claimed_links_without_counting_an_attempt(store, make_worker, fake_datadog):
    fake_datadog.configure(slow_seconds=0.4)
    for index in range(3):
        plan(store, causes(index))
    worker = make_worker(worker_concurrency=3, dd_timeout=2.0)
    worker.start()
    wait_for(lambda: store.count_links()["claimed"] == 3, message="three claims")

    worker.stop(grace=0.05)

    assert store.count_links()["claimed"] == 0
    assert all(link["attempts"] == 0 for link in store.list_links(state="pending"))


def test_the_default_retries_ride_out_an_hour_long_outage_before_dead_lettering(store):
    defaults = Settings()
    worker = DeliveryWorker(store, DatadogClient("http://127.0.0.1:9", Secret("k"), Secret("a")), defaults)
    try:
        # Jitter waits between half and all of each delay: count the shortest case.
        shortest = 0.0
        for attempts in range(1, defaults.delivery_max_attempts):
            delay = min(defaults.delivery_backoff_max, defaults.delivery_backoff_base * 2 ** (attempts - 1))
            shortest += delay / 2
            assert delay / 2 <= worker._backoff(attempts) <= delay
    finally:
        worker.stop(grace=0)

    assert shortest > 3600


def test_two_delivery_processes_share_one_rate_limit_and_stay_under_it(store, settings, fake_datadog):
    fake_datadog.configure(limits={"create": {"limit": 4, "period": 1.0, "name": "cases_link_create"}})
    for index in range(16):
        plan(store, causes(index))
    workers = []
    for name in ("a", "b"):
        client = DatadogClient.from_settings(settings, limiter=RateLimiter(shared=store))
        workers.append(DeliveryWorker(store, client, replace(settings, worker_concurrency=2), name=name))
    started = time.time()
    try:
        for worker in workers:
            worker.start()
        wait_for(lambda: states(store) == {"delivered": 16}, timeout=20, message="all sixteen links")
    finally:
        for worker in workers:
            worker.stop(grace=2)

    late = [r for r in fake_datadog.requests if r.status == 429 and r.at >= int(started) + 1]
    assert late == []
    windows: dict[int, int] = {}
    for request in fake_datadog.creations():
        if request.status == 201:
            windows[int(request.at)] = windows.get(int(request.at), 0) + 1
    assert max(windows.values()) <= 4
    assert {worker.name for worker in workers} <= {link["claimed_by"] for link in store.list_links()}


def most_within(moments: list[float], width: float) -> int:
    """The most of `moments` that fall within any `width` seconds."""
    moments = sorted(moments)
    most, first = 0, 0
    for last, moment in enumerate(moments):
        while moment - moments[first] >= width:
            first += 1
        most = max(most, last - first + 1)
    return most


def record_sending(worker: DeliveryWorker) -> list[float]:
    """When the worker's HTTP session sends each request (the fake notes arrivals late on a busy machine)."""
    sent: list[float] = []
    request = worker.client.session.request

    def sending(*args, **kwargs):
        sent.append(time.monotonic())
        return request(*args, **kwargs)

    worker.client.session.request = sending
    return sent


@pytest.mark.parametrize("how", ["run", "run_until_idle"])
@pytest.mark.parametrize("answer", BAD_ANSWERS)
def test_whatever_datadog_answers_a_worker_never_sends_more_than_its_failure_budget_a_second(
    store, make_worker, fake_datadog, answer, how
):
    fake_datadog.configure(answer_all=answer)
    for index in range(20):
        plan(store, causes(index, f"OPS-{index}"))
    worker = make_worker(dd_failed_calls_per_second=5)
    sent = record_sending(worker)

    started = time.monotonic()
    if how == "run":
        worker.start()
        time.sleep(2.5)
        worker.stop(grace=1)
    else:
        worker.run_until_idle(timeout=2.5)
    seconds = time.monotonic() - started

    assert fake_datadog.requests, "the worker called Datadog at least once"
    # A few milliseconds short of a second: the budget is taken just before each request.
    assert most_within(sent, 0.98) <= 5, sent
    assert len(fake_datadog.requests) <= 5 * (int(seconds) + 1)
    # Nothing was lost: each link is still waiting, or dead with the reason Datadog gave.
    assert set(states(store)) <= {"pending", "dead"}
    assert sum(states(store).values()) == 20


def test_run_until_idle_stops_while_the_keys_are_rejected_and_leaves_the_link_waiting(store, make_worker, fake_datadog):
    fake_datadog.configure(reject_keys=True)
    plan(store, causes(1))
    worker = make_worker()

    started = time.monotonic()
    worker.run_until_idle(timeout=10)

    assert time.monotonic() - started < 5
    assert worker.pause is not None
    assert len(fake_datadog.requests) <= 2
    [link] = store.list_links()
    assert (link["state"], link["attempts"]) == ("pending", 0)
    # Due when the keys are probed next, not at once.
    assert link["next_attempt_at"] > link["created_at"]


def test_a_storm_of_links_to_a_few_cases_costs_at_most_one_and_a_fifth_calls_a_link(store, make_worker, fake_datadog):
    cases = [f"OPS-{number}" for number in range(10)]
    for case in cases:
        fake_datadog.add_case(case)
    for index in range(100):
        plan(store, causes(index, cases[index % 10]))

    make_worker(worker_concurrency=4).run_until_idle()

    assert states(store) == {"delivered": 100}
    assert set(fake_datadog.link_counts().values()) == {1}
    assert len(fake_datadog.link_counts()) == 100
    calls = [(r.method, r.path.rsplit("/", 1)[0] if r.path.count("/") > 4 else r.path) for r in fake_datadog.requests]
    # One case lookup and one listing per case, then one POST per link.
    assert len(calls) <= 120, {call: calls.count(call) for call in set(calls)}


def test_a_retry_after_an_ambiguous_failure_asks_datadog_again_instead_of_a_recent_listing(
    store, make_worker, fake_datadog
):
    fake_datadog.configure(next_create=[503])
    plan(store, causes(1))
    plan(store, causes(2))
    worker = make_worker(worker_concurrency=1, dd_link_list_window=60.0)

    worker.run_until_idle()
    time.sleep(0.1)
    worker.run_until_idle()

    assert states(store) == {"delivered": 2}
    lists = listings(fake_datadog)
    # The first delivery lists OPS-42's links, the second reuses that listing; the retry
    # of the one that got a 503 lists again even though the listing is recent.
    assert len(lists) == 2


@pytest.mark.parametrize("loop", [False, True], ids=["pass", "loop"])
def test_a_link_made_by_hand_before_its_webhook_is_found_though_a_listing_of_its_case_is_recent(
    store, make_worker, fake_datadog, loop
):
    # In the loop, the second link waits for its case's next listing (DD_LINK_LIST_INTERVAL); a pass
    # (`--once`) lists at once.
    worker = make_worker(worker_concurrency=1, dd_link_list_window=60.0, dd_link_list_interval=0.5)
    if loop:
        worker.start()

    def deliver(count: int) -> None:
        if loop:
            wait_for(lambda: states(store) == {"delivered": count}, message=f"{count} links delivered")
        else:
            worker.run_until_idle()

    plan(store, causes(1))
    deliver(1)  # lists OPS-42's links: a listing well within its window from here on
    made_by_hand(fake_datadog, causes(2))
    time.sleep(0.01)  # the webhook comes after the link was made by hand
    plan(store, causes(2))

    deliver(2)

    assert set(fake_datadog.link_counts().values()) == {1}
    outcomes = {link["datadog_link_id"]: link["outcome"] for link in store.list_links()}
    assert outcomes["made-by-hand"] == "existing"
    # The listing made for the first link predates the second one's webhook: OPS-42 is listed again.
    assert len(listings(fake_datadog)) == 2


def test_links_planned_before_a_listing_of_their_case_share_it(store, make_worker, fake_datadog):
    for index in range(5):
        plan(store, causes(index))

    make_worker(worker_concurrency=1, dd_link_list_window=60.0).run_until_idle()

    assert states(store) == {"delivered": 5}
    assert len(listings(fake_datadog)) == 1


def test_while_links_to_a_case_keep_coming_it_is_listed_once_an_interval_not_once_a_link(
    store, make_worker, fake_datadog
):
    # Issue 17: 100 links a second to 10 cases cost a listing each once a listing only served the
    # links planned before it. Each link here is planned after the listing the last one made.
    worker = make_worker(dd_link_list_window=60.0, dd_link_list_interval=0.5)
    worker.start()
    plan(store, causes(0))
    wait_for(lambda: states(store) == {"delivered": 1}, message="the first link")
    for index in range(1, 6):
        plan(store, causes(index))
        time.sleep(0.02)

    wait_for(lambda: states(store) == {"delivered": 6}, message="the links planned after the first listing")

    assert len(listings(fake_datadog)) == 2  # the first link's, then one for the five planned after it
    assert set(fake_datadog.link_counts().values()) == {1}
    # Postponed, not tried: each was delivered at its first attempt.
    assert {link["attempts"] for link in store.list_links()} == {1}


def test_links_to_a_case_that_come_further_apart_than_the_interval_are_listed_at_once_never_held(
    store, make_worker, fake_datadog, monkeypatch
):
    postponed = []
    postpone = store.postpone
    monkeypatch.setattr(store, "postpone", lambda job, **kw: postponed.append(job.id) or postpone(job, **kw))
    worker = make_worker(dd_link_list_window=60.0, dd_link_list_interval=0.1)
    worker.start()
    for index in range(3):
        plan(store, causes(index))
        wait_for(lambda index=index: states(store) == {"delivered": index + 1}, message=f"link {index}")
        time.sleep(0.15)

    assert postponed == []
    assert len(listings(fake_datadog)) == 3


# What each way of failing leaves a `run_once` pass saying, and what the stored error says.
PASS_REASONS = {
    "401": "keys rejected",
    "403": "keys rejected",
    "429": "rate limited",
    "429_reset": "rate limited",
    "500": "Datadog unavailable",
    "garbage": "Datadog unavailable",
    "drop": "Datadog unavailable",
    "reset": "Datadog unavailable",
    "hold": "Datadog unavailable",
}


@pytest.mark.parametrize("answer", sorted(PASS_REASONS))
def test_a_pass_tries_each_due_link_at_most_once_and_says_why_links_remain(store, make_worker, fake_datadog, answer):
    fake_datadog.configure(answer_all=answer, timeout_seconds=1.0)
    for index in range(12):
        plan(store, causes(index, f"OPS-{index}"))
    worker = make_worker(worker_concurrency=4)

    started, began = time.monotonic(), time.time()
    report = worker.run_once()

    # One round of four at most: a round in which nothing got through ends the pass.
    assert time.monotonic() - started < 5
    assert len(fake_datadog.requests) <= 4
    assert not report.complete
    assert set(report.reasons) == {PASS_REASONS[answer]}
    assert states(store) == {"pending": 12}
    # Whatever went back is due after the pass began, so the pass could not take it again.
    tried = [link for link in store.list_links() if link["last_error"]]
    assert 1 <= len(tried) <= 4
    assert all(moment(link["next_attempt_at"]) > began for link in tried)


def test_a_pass_delivers_what_is_due_and_ends_complete(store, make_worker, fake_datadog):
    for index in range(6):
        plan(store, causes(index))

    report = make_worker(worker_concurrency=2).run_once()

    assert (report.complete, report.delivered, report.tried) == (True, 6, 6)
    assert states(store) == {"delivered": 6}


def test_a_link_that_goes_back_in_a_pass_is_not_tried_again_in_it(store, make_worker, fake_datadog):
    fake_datadog.configure(next_create=[500])
    for index in range(3):
        plan(store, causes(index))
    worker = make_worker(worker_concurrency=2, delivery_backoff_base=0.001, delivery_backoff_max=0.001)

    report = worker.run_once()

    # The second round takes the third link, not the one that went back due a millisecond later.
    assert set(report.reasons) == {"Datadog unavailable"}
    assert "answered 500" in report.why()
    assert (report.tried, report.delivered) == (3, 2)
    assert states(store) == {"delivered": 2, "pending": 1}
    assert len(fake_datadog.creations()) == 3


def moment(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("answer", "failure", "words"),
    [
        ("hold", "timeout", "timed out: no answer from Datadog within 0.5s"),
        ("reset", "reset", "Datadog reset the connection (connection reset)"),
        ("drop", "closed", "Datadog closed the connection without answering"),
        ("refused", "refused", "Datadog refused the connection (connection refused)"),
    ],
)
def test_the_stored_error_and_the_log_say_whether_datadog_timed_out_refused_or_reset(
    store, make_worker, fake_datadog, caplog, answer, failure, words
):
    if answer == "refused":
        worker = make_worker(dd_api_url=closed_port_url())
    else:
        fake_datadog.configure(answer_all=answer, timeout_seconds=2.0)
        worker = make_worker()
    plan(store, causes(1))

    with caplog.at_level(logging.INFO, logger="caselink.worker"):
        report = worker.run_until_idle()

    [link] = store.list_links()
    assert link["last_error"] == f"GET /api/v2/cases/{{case_id}}: {words}"
    assert words in report.why()
    [delivery] = [record for record in caplog.records if record.getMessage() == "delivery"]
    assert delivery.fields["failure"] == failure
    assert delivery.fields["error"] == link["last_error"]


def test_stopping_with_a_post_in_flight_releases_it_at_once_and_it_is_checked_before_posting_again(
    store, make_worker, fake_datadog
):
    # Datadog records the link but holds the answer: whether the POST took effect is unknown.
    fake_datadog.configure(fail_ratio=1.0, faults=["timeout_after_record"], fault_on=["create"], timeout_seconds=30)
    plan(store, causes(1))
    worker = make_worker(dd_timeout=1.5, delivery_lease=10)
    worker.start()
    wait_for(lambda: fake_datadog.creations(), message="the POST in flight")

    started = time.monotonic()
    worker.stop(grace=0.2)

    assert time.monotonic() - started < 1.5
    [link] = store.list_links()
    assert link["state"] == "pending"
    assert "unanswered" in link["last_error"]
    # Not due before the POST would have timed out: by then it has taken effect or never will.
    due = moment(link["next_attempt_at"])
    assert due >= time.time() + 0.5
    fake_datadog.configure(fail_ratio=0.0)

    wait_for(lambda: time.time() > due, timeout=5, message="the link due again")
    make_worker().run_once()

    [link] = store.list_links()
    assert (link["state"], link["outcome"]) == ("delivered", "existing")
    assert set(fake_datadog.link_counts().values()) == {1}


def test_stopping_between_calls_releases_the_link_due_at_once_without_counting_an_attempt(
    store, make_worker, fake_datadog
):
    fake_datadog.configure(slow_seconds=30)
    plan(store, causes(1))
    worker = make_worker(dd_timeout=2.0, delivery_lease=10)
    worker.start()
    wait_for(lambda: fake_datadog.requests, message="the lookup in flight")

    started = time.monotonic()
    worker.stop(grace=0.2)

    assert time.monotonic() - started < 1.5
    [link] = store.list_links()
    assert (link["state"], link["attempts"], link["last_error"]) == ("pending", 0, "released at shutdown")
    assert moment(link["next_attempt_at"]) <= time.time()
    # The thread whose lookup was abandoned starts no call once it gets its answer.
    time.sleep(2.5)
    assert [(r.method, r.path) for r in fake_datadog.requests] == [("GET", "/api/v2/cases/OPS-42")]
