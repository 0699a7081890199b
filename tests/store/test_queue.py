"""The delivery queue on SQLite and on PostgreSQL: claims, leases, fencing, retries, dead letters."""

from __future__ import annotations

import threading
import time

from caselink.events import EntityRef
from caselink.rules import PlannedLink
from tests.store.builders import CASE_UUID
from tests.store.builders import INCIDENT
from tests.store.builders import causes
from tests.store.builders import event
from tests.store.builders import planning


def test_two_workers_never_claim_the_same_link(store):
    for index in range(40):
        incident = f"00000000-0000-4000-8000-{index:012d}"
        store.record([(event(f"e{index}", incident), planning(("r", causes(incident))))], ruleset="x", dry_run=False)
    claimed: list[list[int]] = []
    barrier = threading.Barrier(4)

    def take(name: str) -> None:
        barrier.wait()
        mine = []
        while batch := store.claim(name, 3, lease=30):
            mine.extend(job.id for job in batch)
        claimed.append(mine)

    threads = [threading.Thread(target=take, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    everything = [link_id for mine in claimed for link_id in mine]
    assert sorted(everything) == list(range(1, 41))


def test_a_claim_whose_lease_ran_out_is_taken_over_and_the_old_holder_is_fenced(store):
    store.record([(event(), planning(("r", causes())))], ruleset="x", dry_run=False)
    now = time.time()
    [first] = store.claim("a", 1, lease=5, now=now)
    assert store.claim("b", 1, lease=5, now=now + 1) == []

    [second] = store.claim("b", 1, lease=5, now=now + 6)

    assert second.id == first.id
    assert second.attempts == 2
    assert store.delivered(first, "late", existed=False) is False
    assert store.delivered(second, "link-1", existed=False) is True
    assert store.get_link(first.id)["datadog_link_id"] == "link-1"


def test_a_transient_failure_waits_for_its_time_and_counts_an_attempt(store):
    store.record([(event(), planning(("r", causes())))], ruleset="x", dry_run=False)
    now = time.time()
    [job] = store.claim("a", 1, lease=30, now=now)

    assert store.retry_later(job, "503", at=now + 60, status=503, now=now) is True

    assert store.claim("a", 1, lease=30, now=now + 1) == []
    [again] = store.claim("a", 1, lease=30, now=now + 61)
    assert again.attempts == 2
    assert store.get_link(job.id)["last_error"] == "503"


def test_a_release_that_does_not_count_leaves_attempts_unchanged(store):
    store.record([(event(), planning(("r", causes())))], ruleset="x", dry_run=False)
    [job] = store.claim("a", 1, lease=30)

    store.retry_later(job, "credentials rejected", at=time.time(), count_attempt=False)

    assert store.get_link(job.id)["attempts"] == 0


def test_a_postponed_link_is_due_at_its_time_as_a_first_attempt_still(store):
    store.record([(event(), planning(("r", causes())))], ruleset="x", dry_run=False)
    now = time.time()
    [job] = store.claim("a", 1, lease=30, now=now)
    assert job.first_attempt

    assert store.postpone(job, at=now + 1, now=now) is True

    assert store.claim("a", 1, lease=30, now=now + 0.5) == []
    [again] = store.claim("a", 1, lease=30, now=now + 1)
    assert (again.attempts, again.first_attempt, again.due_at) == (1, True, now + 1)
    assert store.get_link(job.id)["last_error"] is None
    assert store.postpone(job, at=now + 2, now=now) is False  # its claim was taken over: fenced


def test_dead_letters_keep_their_reason_and_can_be_retried(store):
    store.record([(event(), planning(("r", causes())))], ruleset="x", dry_run=False)
    [job] = store.claim("a", 1, lease=30)
    store.dead(job, "case OPS-42 does not exist", status=404)

    [dead] = store.list_links(state="dead")
    assert (dead["last_error"], dead["last_status"], dead["attempts"]) == ("case OPS-42 does not exist", 404, 1)
    assert store.retry_dead() == 1
    assert store.list_links(state="pending")[0]["attempts"] == 0


def test_two_plans_that_resolve_to_the_same_uuids_become_one_link(store):
    by_key = PlannedLink(EntityRef("INCIDENT", INCIDENT), "CAUSES", EntityRef("CASE", "OPS-42"))
    by_uuid = PlannedLink(EntityRef("INCIDENT", INCIDENT), "CAUSES", EntityRef("CASE", CASE_UUID))
    store.record([(event("a"), planning(("r", by_uuid)))], ruleset="x", dry_run=False)
    store.record([(event("b"), planning(("r", by_key)))], ruleset="x", dry_run=False)
    jobs = {job.child.id: job for job in store.claim("w", 10, lease=30)}

    held, twin = store.prepare(jobs["OPS-42"], INCIDENT, CASE_UUID, lease=30)

    assert (held, twin) == (True, jobs[CASE_UUID].id)
    assert store.get_link(jobs["OPS-42"].id)["state"] == "merged"
