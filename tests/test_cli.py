"""The operator commands: links, worker, replay, db (the rules commands have their own tests)."""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import replace

import pytest
import sqlalchemy as sa

from caselink import migrations
from caselink.config import Secret
from tests.conftest import fixture_bytes
from tests.fake_datadog import case_uuid
from tests.servers import WEBHOOK_SECRET
from tests.servers import flask

AUTH = {"Authorization": f"Bearer {WEBHOOK_SECRET}"}


@pytest.fixture
def live_app(settings, fake_datadog):
    from app import create_app

    application = create_app(
        replace(
            settings,
            dd_api_key=Secret(fake_datadog.api_key),
            dd_app_key=Secret(fake_datadog.app_key),
            dd_api_url=fake_datadog.url,
            dd_timeout=1.0,
            delivery_lease=5,
        )
    )
    migrations.upgrade(application.extensions["caselink"].store.engine)
    yield application
    application.extensions["caselink"].store.dispose()


def receive(app, name="incident-created.json"):
    answer = app.test_client().post(
        "/webhooks/datadog", data=fixture_bytes("datadog", name), headers=AUTH, content_type="application/json"
    )
    assert answer.status_code == 202, answer.json
    return answer.json


def test_worker_once_delivers_what_is_due_and_exits(live_app, fake_datadog):
    receive(live_app)

    result = live_app.test_cli_runner().invoke(args=["worker", "--once"])

    assert result.exit_code == 0, result.output
    [link] = fake_datadog.links
    assert link["attributes"]["child_entity_id"] == case_uuid("OPS-42")


def test_worker_refuses_to_run_in_dry_run(runner):
    result = runner.invoke(args=["worker", "--once"])

    assert result.exit_code == 1
    assert "dry-run" in result.output


def test_links_list_shows_state_and_last_error(live_app, fake_datadog):
    fake_datadog.configure(next_create=[404])
    receive(live_app)
    runner = live_app.test_cli_runner()
    runner.invoke(args=["worker", "--once"])

    listed = runner.invoke(args=["links", "list", "--state", "dead"])

    assert listed.exit_code == 0
    assert "dead" in listed.output
    assert "CASE:OPS-42" in listed.output
    assert "answered 404" in listed.output
    as_json = json.loads(runner.invoke(args=["links", "list", "--json"]).output)
    assert as_json[0]["last_status"] == 404


def test_links_retry_re_drives_one_dead_link_or_all(live_app, fake_datadog):
    fake_datadog.configure(next_create=[404, 404])
    receive(live_app)
    receive(live_app, "page-escalated.json")
    fake_datadog.add_case("PAY-9", "9daaa414-8843-46e2-8360-c36d3713285f")
    runner = live_app.test_cli_runner()
    runner.invoke(args=["worker", "--once"])
    store = live_app.extensions["caselink"].store
    first, second = sorted(link["id"] for link in store.list_links(state="dead"))

    one = runner.invoke(args=["links", "retry", str(first)])
    runner.invoke(args=["worker", "--once"])
    assert one.exit_code == 0
    assert {link["id"] for link in store.list_links(state="delivered")} == {first}

    every = runner.invoke(args=["links", "retry", "--dead"])
    runner.invoke(args=["worker", "--once"])
    assert "1 dead link(s) queued again" in every.output
    assert len(store.list_links(state="delivered")) == 2
    assert len(fake_datadog.links) == 2


def test_links_retry_needs_an_id_or_dead(runner):
    assert runner.invoke(args=["links", "retry"]).exit_code == 2
    missing = runner.invoke(args=["links", "retry", "999"])
    assert missing.exit_code == 1
    assert "no link 999" in missing.output


def test_replay_shows_what_a_new_rules_file_would_add_and_apply_plans_it(app, runner, tmp_path):
    app.test_client().post(
        "/webhooks/datadog",
        data=fixture_bytes("datadog", "monitor-alert.json"),
        headers=AUTH,
        content_type="application/json",
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        """
version: 1
rules:
  - name: alert-relates-cases
    on: {source: datadog, kind: alert.*}
    link:
      relationship: RELATES_TO
      parent: {type: CASE, id: OPS-42}
      child: {type: CASE, find: {in: [message], pattern: '\\b[A-Z]+-\\d+\\b'}}
"""
    )

    preview = runner.invoke(args=["replay", "--since", "1h", "--rules", str(rules)])
    applied = runner.invoke(args=["replay", "--since", "1h", "--rules", str(rules), "--apply"])
    again = runner.invoke(args=["replay", "--since", "1h", "--rules", str(rules)])

    assert "+ event 1: CASE:OPS-42 RELATES_TO CASE:SEC-7" in preview.output
    assert "would add 1 link(s)" in preview.output
    assert "planned 1 link(s)" in applied.output
    assert "would add 0 link(s)" in again.output
    [link] = app.extensions["caselink"].store.list_links()
    assert (link["parent"], link["child"], link["state"]) == ("CASE:OPS-42", "CASE:SEC-7", "dry_run")


def test_replay_leaves_an_event_waiting_for_its_evaluation_to_housekeeping_and_says_so(app, runner):
    from caselink.events import Event
    from caselink.rules import Evaluation

    store = app.extensions["caselink"].store
    waiting = Event("datadog", "alert.triggered", "late", title="see OPS-42", payload={"id": "late"})
    store.record([(waiting, Evaluation.deferral("later"))], ruleset="", dry_run=True)

    applied = runner.invoke(args=["replay", "--since", "1h", "--apply"])

    assert applied.exit_code == 0, applied.output
    assert "0 events since 1h: planned 0 link(s)" in applied.output
    assert "1 event(s) waiting for their evaluation left out: housekeeping evaluates them" in applied.output
    assert store.list_links() == []
    assert [row["id"] for row in store.deferred_events()] == [1]


def test_replay_rejects_a_bad_duration(runner):
    result = runner.invoke(args=["replay", "--since", "yesterday"])

    assert result.exit_code == 2
    assert "90s, 30m, 24h, 7d" in result.output


def test_db_upgrade_creates_a_missing_database_and_current_reads_its_revision(settings, tmp_path):
    from app import create_app

    application = create_app(replace(settings, database_url=f"sqlite:///{tmp_path / 'fresh.db'}"))
    runner = application.test_cli_runner()

    before = runner.invoke(args=["db", "current"])
    upgraded = runner.invoke(args=["db", "upgrade"])
    after = runner.invoke(args=["db", "current"])

    # No file yet: `db current` says so and creates none; `db upgrade` creates it.
    assert before.exit_code == 1
    assert "no file is at the path DATABASE_URL names" in before.output
    assert f"empty -> {migrations.head_revision()}" in upgraded.output
    assert f"database: {migrations.head_revision()}" in after.output
    application.extensions["caselink"].store.dispose()


def test_worker_once_with_rejected_keys_stops_at_once_and_exits_non_zero_saying_so(stack, fake_datadog):
    fake_datadog.configure(reject_keys=True)
    web = stack.service(IN_PROCESS_WORKER="false")
    assert web.post("datadog", fixture_bytes("datadog", "incident-created.json")).status_code == 202

    result = flask(stack.env(), "worker", "--once", timeout=60)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Datadog rejects the keys (DD_API_KEY, DD_APP_KEY)" in result.stderr
    assert "1 link(s) remain undelivered" in result.stderr
    assert "Traceback" not in result.stderr
    assert fake_datadog.api_key not in result.stdout + result.stderr
    assert len(fake_datadog.requests) <= 2
    assert [link["state"] for link in web.api("/api/links").json()["links"]] == ["pending"]


def test_replay_reads_events_stored_with_old_kinds_in_canonical_form(app, runner, tmp_path):
    store = app.extensions["caselink"].store
    answer = app.test_client().post(
        "/webhooks/datadog",
        data=fixture_bytes("intake", "dd-monitor-nodata.json"),
        headers=AUTH,
        content_type="application/json",
    )
    assert answer.status_code == 202, answer.get_json()
    # As a release before canonical kinds stored it.
    with store.engine.begin() as connection:
        connection.execute(sa.text("UPDATE events SET kind = 'alert.No Data'"))
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        """
version: 1
rules:
  - name: no-data-relates-runbook-case
    on: {source: datadog, kind: alert.no_data}
    link:
      relationship: RELATES_TO
      parent: {type: CASE, id: OPS-42}
      child: {type: CASE, find: {in: [message], pattern: '\\b[A-Z]+-\\d+\\b'}}
"""
    )

    preview = runner.invoke(args=["replay", "--since", "1h", "--rules", str(rules)])

    assert "+ event 1: CASE:OPS-42 RELATES_TO CASE:SEC-7  (rule no-data-relates-runbook-case)" in preview.output
    [event] = store.list_events()
    assert event["kind"] == store.get_event(1)["kind"] == "alert.no_data"


def planned_links(stack, count: int) -> None:
    """`count` links due now in the stack's store, as webhooks would have planned them."""
    from caselink.store import Store
    from tests.test_worker import causes
    from tests.test_worker import plan

    stack.migrate()
    store = Store(stack.database_url)
    try:
        for index in range(count):
            plan(store, causes(index, f"OPS-{index}"))
    finally:
        store.dispose()


# Every answer that makes a worker pause or back off, and the words `worker --once` ends with.
ONCE_ENDINGS = {
    "401": "Datadog rejects the keys (DD_API_KEY, DD_APP_KEY): GET /api/v2/cases/{case_id} answered 401",
    "403": "Datadog rejects the keys (DD_API_KEY, DD_APP_KEY): GET /api/v2/cases/{case_id} answered 403",
    "429": "rate limited until ",
    "429_reset": "rate limited until ",
    "500": "Datadog unavailable (GET /api/v2/cases/{case_id} answered 500",
    "drop": "Datadog unavailable (GET /api/v2/cases/{case_id}: Datadog closed the connection without answering)",
    "reset": "Datadog unavailable (GET /api/v2/cases/{case_id}: Datadog reset the connection (connection reset))",
    "hold": "Datadog unavailable (GET /api/v2/cases/{case_id}: timed out: no answer from Datadog within 1s)",
    "refused": "Datadog unavailable (GET /api/v2/cases/{case_id}: Datadog refused the connection (connection refused))",
}


@pytest.mark.parametrize("answer", sorted(ONCE_ENDINGS))
def test_worker_once_ends_whatever_datadog_answers_and_says_in_one_line_how_many_links_remain_and_why(
    stack, fake_datadog, answer
):
    planned_links(stack, 6)
    if answer == "refused":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            env = stack.env(DD_API_URL=f"http://127.0.0.1:{sock.getsockname()[1]}", DD_TIMEOUT="1")
    else:
        fake_datadog.configure(answer_all=answer, timeout_seconds=5)
        env = stack.env(DD_TIMEOUT="1")

    started = time.monotonic()
    result = flask(env, "worker", "--once", timeout=60)

    assert time.monotonic() - started < 20
    assert result.returncode == 1, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("caselink worker: 6 link(s) remain undelivered: "), result.stderr
    assert ONCE_ENDINGS[answer] in last
    if answer.startswith("429"):
        assert re.search(r"rate limited until \d\d:\d\d:\d\d UTC \(GET /api/v2/cases/\{case_id\}", last), last
    assert "Traceback" not in result.stderr
    assert fake_datadog.api_key not in result.stdout + result.stderr
    # One round of WORKER_CONCURRENCY (4) deliveries, each stopped at its first call.
    assert len(fake_datadog.requests) <= 4


def test_worker_once_exits_0_saying_nothing_due_is_left_once_all_is_delivered(stack, fake_datadog):
    planned_links(stack, 3)
    for index in range(3):
        fake_datadog.add_case(f"OPS-{index}")

    result = flask(stack.env(), "worker", "--once", timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == "caselink worker: 3 delivered; nothing due is left"
    assert len(fake_datadog.links) == 3


def test_worker_once_evaluates_what_webhooks_deferred_before_it_tries_what_is_due(app, runner):
    from caselink.events import Event
    from caselink.rules import Evaluation

    store = app.extensions["caselink"].store
    late = Event("datadog", "monitor.alert", "late", title="see OPS-42", payload={"id": "late"})
    store.record([(late, Evaluation.deferral("later"))], ruleset="", dry_run=True)

    result = runner.invoke(args=["worker", "--once"])

    assert "caselink worker: 1 deferred event(s) evaluated" in result.output
    assert store.deferred_events() == []
