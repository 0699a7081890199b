"""Delivery through failures, for real: gunicorn, its in-process worker, SIGKILL, and a failing fake Datadog."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from caselink.store import Store
from tests.rule_files import alertmanager_group
from tests.rule_files import costly_rules_text
from tests.servers import Worker
from tests.servers import wait_for

pytestmark = pytest.mark.slow

CASES = [f"OPS-{number}" for number in range(100, 150)]
FAST_RETRIES = {
    "DD_TIMEOUT": "1",
    "DELIVERY_LEASE": "3",
    "DELIVERY_BACKOFF_BASE": "0.05",
    "DELIVERY_BACKOFF_MAX": "0.5",
    "WORKER_CONCURRENCY": "8",
    "AUTH_PROBE_MAX": "0.5",
}


def incident_body(index: int, case: str) -> bytes:
    return json.dumps(
        {
            "event": "incident.created",
            "id": f"evt-{index}",
            "incident": {
                "id": f"00000000-0000-4000-8000-{index:012d}",
                "title": f"Incident {index}, related to {case}",
                "severity": "SEV-1",
            },
        }
    ).encode()


def post_all(web, bodies: list[bytes]) -> None:
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda body: web.post("datadog", body).status_code, bodies))
    assert statuses == [202] * len(bodies)


def link_states(stack) -> dict[str, int]:
    store = Store(stack.database_url)
    try:
        return {state: count for state, count in store.count_links().items() if count}
    finally:
        store.dispose()


def test_a_thousand_links_arrive_exactly_once_through_random_failures_and_a_sigkill(stack, fake_datadog):
    for case in CASES:
        fake_datadog.add_case(case)
    fake_datadog.configure(fail_ratio=0.3, timeout_seconds=1.5, seed=20261126)
    web = stack.service(**FAST_RETRIES)
    bodies = [incident_body(index, CASES[index % len(CASES)]) for index in range(1000)]

    post_all(web, bodies)
    wait_for(lambda: len(fake_datadog.links) >= 300, timeout=60, message="300 links before the kill")
    web.kill()
    assert link_states(stack).get("delivered", 0) < 1000
    restarted = stack.service("web-restarted", **FAST_RETRIES)

    wait_for(lambda: link_states(stack) == {"delivered": 1000}, timeout=240, interval=0.5, message="1000 delivered")

    counts = fake_datadog.link_counts()
    assert len(counts) == 1000
    assert set(counts.values()) == {1}, {key: n for key, n in counts.items() if n > 1}
    faults = {request.fault for request in fake_datadog.requests if request.fault}
    assert faults == {"500", "503_after_record", "timeout_after_record", "drop_after_record", "drop_before_record"}
    assert restarted.running


def test_rejected_keys_pause_delivery_and_it_resumes_by_itself_with_no_dead_letters(stack, fake_datadog):
    fake_datadog.configure(reject_keys=True)
    web = stack.service(**FAST_RETRIES)
    post_all(web, [incident_body(index, "OPS-42") for index in range(20)])

    rejected = wait_for(
        lambda: (answer := web.http.get(web.url + "/readyz", timeout=5)).status_code == 503 and answer.json(),
        message="/readyz to report the rejected keys",
    )
    assert "rejected" in rejected["checks"]["datadog"]
    # Deliveries that were in flight when the keys were rejected go back to the queue, uncounted.
    wait_for(lambda: link_states(stack) == {"pending": 20}, message="every link back in the queue")
    fake_datadog.configure(reject_keys=False)

    wait_for(lambda: link_states(stack) == {"delivered": 20}, timeout=30, message="every link delivered")
    assert web.http.get(web.url + "/readyz", timeout=5).status_code == 200
    assert "delivery paused" in web.logs()
    assert fake_datadog.api_key not in web.logs()


def test_new_keys_after_a_restart_deliver_what_the_old_keys_could_not(stack, fake_datadog):
    fake_datadog.api_key = "the-new-api-key"
    web = stack.service(**FAST_RETRIES, DD_API_KEY="the-old-api-key")
    post_all(web, [incident_body(index, "OPS-42") for index in range(5)])
    wait_for(lambda: web.http.get(web.url + "/readyz", timeout=5).status_code == 503, message="not ready")
    web.stop()

    fixed = stack.service("web-new-keys", migrate=False, **FAST_RETRIES, DD_API_KEY="the-new-api-key")

    wait_for(lambda: link_states(stack) == {"delivered": 5}, timeout=30, message="delivery with the new keys")
    wait_for(lambda: fixed.http.get(fixed.url + "/readyz", timeout=5).status_code == 200, message="ready again")
    assert "the-old-api-key" not in web.logs() + fixed.logs()


def test_sigterm_releases_deliveries_in_flight_and_the_next_process_finishes_them(stack, fake_datadog):
    fake_datadog.configure(slow_seconds=0.5)
    web = stack.service(**dict(FAST_RETRIES, DD_TIMEOUT="5", DELIVERY_LEASE="30"))
    post_all(web, [incident_body(index, "OPS-42") for index in range(30)])
    wait_for(lambda: link_states(stack).get("claimed"), message="deliveries in flight")

    started = time.monotonic()
    web.signal(signal.SIGTERM)
    web.popen.wait(30)

    assert time.monotonic() - started < 25
    assert link_states(stack).get("claimed", 0) == 0
    fake_datadog.configure(slow_seconds=0)
    stack.service("web-next", migrate=False, **FAST_RETRIES)
    wait_for(lambda: link_states(stack) == {"delivered": 30}, timeout=30, message="all delivered")
    assert set(fake_datadog.link_counts().values()) == {1}


@pytest.mark.postgres
def test_a_webhook_gets_503_and_nothing_is_acknowledged_while_the_store_is_down(stack, postgres_url):
    url = postgres_url
    web = stack.service(DATABASE_URL=url)
    admin = sa.create_engine(
        url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/postgres",
        isolation_level="AUTOCOMMIT",
    )
    name = url.rsplit("/", 1)[1]
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            connection.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"), {"name": name}
            )

        down = web.post("datadog", incident_body(1, "OPS-42"))
        assert down.status_code == 503
        assert down.json()["error"]["code"] == "store_unavailable"
        assert web.http.get(web.url + "/readyz", timeout=5).status_code == 503
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()

    up = web.post("datadog", incident_body(1, "OPS-42"))
    assert up.status_code == 202
    assert [event["id"] for event in web.api("/api/events").json()["events"]] == [up.json()["events"][0]["id"]]


def test_one_delivery_worker_per_instance_and_it_moves_when_its_process_dies(stack, fake_datadog):
    web = stack.service(WEB_CONCURRENCY="3", **FAST_RETRIES)

    def started() -> list[dict]:
        return [
            json.loads(line)
            for line in web.logs().splitlines()
            if line.startswith("{") and json.loads(line).get("msg") == "worker started"
        ]

    [first] = wait_for(started, message="the delivery worker")
    time.sleep(0.5)
    assert len(started()) == 1
    os.kill(int(first["worker"].rsplit(":", 1)[1]), signal.SIGKILL)

    wait_for(lambda: len(started()) == 2, timeout=20, message="a delivery worker in the new process")
    post_all(web, [incident_body(index, "OPS-42") for index in range(5)])
    wait_for(lambda: link_states(stack) == {"delivered": 5}, message="delivery by the new holder")


@pytest.mark.parametrize(("signum", "args"), [(signal.SIGTERM, ()), (signal.SIGINT, ()), (signal.SIGTERM, ("--once",))])
def test_a_signal_to_a_worker_process_holding_a_post_releases_its_link_at_once_and_it_is_made_once(
    stack, fake_datadog, signum, args
):
    # Datadog records the link and holds the answer for longer than the worker waits for it.
    fake_datadog.configure(fail_ratio=1.0, faults=["timeout_after_record"], fault_on=["create"], timeout_seconds=60)
    web = stack.service(IN_PROCESS_WORKER="false")
    post_all(web, [incident_body(1, "OPS-42")])
    env = {"DD_TIMEOUT": "3", "DELIVERY_LEASE": "60", "DELIVERY_BACKOFF_BASE": "0.05", "DELIVERY_BACKOFF_MAX": "0.1"}
    worker = Worker("worker", stack.env(**env), stack.tmp_path)
    worker.command = [*worker.command, *args]
    stack.processes.append(worker)
    worker.start()
    wait_for(lambda: fake_datadog.creations(), timeout=20, message="the POST in flight")

    started = time.monotonic()
    worker.signal(signum)
    assert worker.popen is not None
    code = worker.popen.wait(15)

    # The grace (5 s) for the call in flight, then the link is released: not the 60 s lease.
    assert time.monotonic() - started < 8
    assert code == (1 if args else 0)
    assert link_states(stack) == {"pending": 1}
    if args:
        assert f"1 link(s) remain undelivered: stopped (by {signum.name})" in worker.logs()
    fake_datadog.configure(fail_ratio=0.0)
    stack.worker("worker-next", **env)

    wait_for(lambda: link_states(stack) == {"delivered": 1}, timeout=20, message="delivery by the next worker")
    # The POST that was in flight made the link; the next worker found it instead of posting again.
    assert set(fake_datadog.link_counts().values()) == {1}
    assert len(fake_datadog.creations()) == 1


def test_events_whose_evaluation_was_deferred_are_evaluated_and_linked_once_after_a_sigkill(stack, fake_datadog):
    # One Alertmanager group costlier than a request may spend: most of its events are stored
    # deferred; the service is killed while housekeeping evaluates them, and the one started in
    # its place plans and delivers the rest, each link once.
    secret = "am-token"
    alerts = 600
    rules = stack.tmp_path / "costly.yaml"
    rules.write_text(costly_rules_text(4000, child="OPS-42"), encoding="utf-8")
    for index in range(alerts):
        fake_datadog.add_case(f"AM-{index}")
    settings = {"RULES_FILE": str(rules), "ALERTMANAGER_WEBHOOK_SECRET": secret}
    web = stack.service(**settings)
    group = alertmanager_group([f"disk full <{n}>" for n in range(alerts)])

    answer = web.post("alertmanager", json.dumps(group), token=secret)
    web.kill()

    assert answer.status_code == 202, answer.text
    deferred = [event for event in answer.json()["events"] if event.get("evaluation") == "deferred"]
    assert deferred
    assert count_events(stack, deferred=True) > 0
    stack.service("web-restarted", migrate=False, **settings)

    wait_for(lambda: len(fake_datadog.link_counts()) >= alerts, timeout=120, interval=0.5, message="every link")
    counts = fake_datadog.link_counts()
    assert len(counts) == alerts
    assert set(counts.values()) == {1}
    assert count_events(stack, deferred=True) == 0
    assert count_events(stack) == alerts


def count_events(stack, *, deferred: bool | None = None) -> int:
    from caselink.schema import events

    query = sa.select(sa.func.count()).select_from(events)
    if deferred is not None:
        query = query.where(events.c.deferred == deferred)
    store = Store(stack.database_url)
    try:
        with store.engine.connect() as connection:
            return int(connection.execute(query).scalar() or 0)
    finally:
        store.dispose()
