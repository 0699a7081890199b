"""The operator's terminal: events list/show, rules stats, db prune, --verbose, dry-run retries."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from caselink.config import Settings
from caselink.errors import ConfigError
from caselink.events import EntityRef
from caselink.events import Event
from caselink.store import Store
from tests.conftest import ROOT
from tests.conftest import fixture_bytes
from tests.servers import WEBHOOK_SECRET

AUTH = {"Authorization": f"Bearer {WEBHOOK_SECRET}"}
DAY = 86400.0


def receive(client, name="incident-created.json", body: bytes | None = None):
    answer = client.post(
        "/webhooks/datadog",
        data=body if body is not None else fixture_bytes("datadog", name),
        headers=AUTH,
        content_type="application/json",
    )
    assert answer.status_code == 202, answer.json
    return answer.json["events"][0]["id"]


def receive_at(service, at: float, key: str = "old", title: str = "Disk full, see OPS-7") -> int:
    """An event as the webhook path stores it, received at a simulated time."""
    incident = EntityRef("INCIDENT", str(uuid.uuid5(uuid.NAMESPACE_URL, key)))
    event = Event(
        source="datadog",
        kind="incident.created",
        dedup_key=key,
        entity=incident,
        title=title,
        severity="SEV-1",
        payload={"id": key},
    )
    ruleset = service.ruleset()
    [stored] = service.store.record([(event, ruleset.evaluate(event))], ruleset=ruleset.digest, dry_run=True, now=at)
    return stored.id


def invoke(runner, *args):
    return runner.invoke(args=list(args))


def test_events_list_filters_by_source_kind_outcome_and_window(service, client, runner):
    linked = receive(client)
    not_linked = receive(client, body=b'{"event": "incident.updated", "id": "n1", "incident": {"title": "no case"}}')
    unreadable = receive(client, body=b"[1, 2, 3]")
    old = receive_at(service, time.time() - 3 * DAY)

    def ids(*args):
        result = invoke(runner, "events", "list", "--json", *args)
        assert result.exit_code == 0, result.output
        return [row["id"] for row in json.loads(result.output)]

    assert ids() == [old, unreadable, not_linked, linked]
    assert ids("--since", "24h") == [unreadable, not_linked, linked]
    assert ids("--outcome", "linked") == [old, linked]
    assert ids("--outcome", "not-linked") == [not_linked]
    assert ids("--outcome", "unrecognised") == [unreadable]
    assert ids("--outcome", "rejected") == []
    assert invoke(runner, "events", "list", "--outcome", "matched_nothing").exit_code == 2
    assert ids("--kind", "incident.updated") == [not_linked]
    assert ids("--kind", "Incident.Updated") == [not_linked]
    assert ids("--source", "pagerduty") == []
    assert ids("--limit", "2") == [old, unreadable]
    text = invoke(runner, "events", "list", "--outcome", "unrecognised").output
    assert f"#{unreadable}" in text
    assert "problem:" in text
    assert invoke(runner, "events", "list", "--since", "yesterday").exit_code == 2
    refused = client.post(
        "/webhooks/datadog",
        data=b'{"id": "q1", "title": "an "unescaped" quote"}',
        headers=AUTH,
        content_type="application/json",
    )
    assert refused.status_code == 400
    assert ids("--outcome", "rejected") == [refused.json["error"]["rejected_event"]]


def test_events_show_prints_the_explain_record_with_each_link_state(client, runner):
    event_id = receive(client)

    shown = invoke(runner, "events", "show", str(event_id))
    as_json = json.loads(invoke(runner, "events", "show", str(event_id), "--json").output)

    assert shown.exit_code == 0, shown.output
    assert "incident-causes-mentioned-case: matched" in shown.output
    assert "page-escalates-to-mentioned-case: not_applicable" in shown.output
    assert "CAUSES CASE:OPS-42: dry_run" in shown.output
    assert as_json["links"][0]["state"] == "dry_run"
    assert client.get(f"/api/events/{event_id}", headers={"Authorization": "Bearer admin-token-for-tests"}).json == (
        as_json
    )
    missing = invoke(runner, "events", "show", "999")
    assert missing.exit_code == 1
    assert "no event 999 (events are kept for EVENT_RETENTION=30d)" in missing.output


@pytest.mark.parametrize(
    "command",
    [
        ("events", "list"),
        ("events", "show", "1"),
        ("links", "list"),
        ("rules", "stats"),
        ("db", "prune", "--dry-run"),
        ("db", "current"),
        ("replay", "--since", "1h"),
    ],
)
def test_every_store_reading_command_names_its_database_when_verbose(runner, settings, command):
    result = invoke(runner, *command, "--verbose")

    assert f"database: {settings.database_url}" in result.output


@pytest.mark.parametrize(
    "command", [("events", "list"), ("links", "list"), ("rules", "stats"), ("db", "prune"), ("replay",)]
)
def test_a_command_that_finds_the_database_empty_says_which_database_it_read(runner, settings, command):
    result = invoke(runner, *command)

    assert result.exit_code == 0, result.output
    assert f"{settings.database_url} holds no events" in result.output


def test_a_command_on_a_database_without_caselinks_schema_names_it_instead_of_a_traceback(tmp_path):
    from app import create_app

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'other.db'}", rules_file=ROOT / "rules.yaml")
    app = create_app(settings)
    result = app.test_cli_runner().invoke(args=["events", "list"])
    app.extensions["caselink"].store.dispose()

    assert result.exit_code == 1
    assert f"DATABASE_URL ({settings.database_url}): the database has no caselink schema" in result.output
    assert "Traceback" not in result.output


def test_the_database_is_named_without_its_password():
    store = Store("postgresql+psycopg://caselink:hunter2-secret@db.internal:5432/caselink")

    assert "hunter2-secret" not in store.describe()
    assert store.describe() == "postgresql://caselink:***@db.internal:5432/caselink"
    store.dispose()


def test_rules_stats_lists_every_rule_and_flags_rules_that_never_fire_and_failing_examples(
    service, client, runner, tmp_path
):
    receive(client)
    receive_at(service, time.time() - 60 * DAY)
    rules = tmp_path / "rules.yaml"
    text = (ROOT / "rules.yaml").read_text()
    rules.write_text(text.replace('child: "CASE:9daaa414-8843-46e2-8360-c36d3713285f"}', 'child: "CASE:OPS-1"}'))
    assert service.store.count_rule_stats(settle=0) == 2

    result = invoke(runner, "rules", "stats", "--since", "30d", "--rules", str(rules), "--json")

    assert result.exit_code == 0, result.output
    report = {item["rule"]: item for item in json.loads(result.output)["rules"]}
    causes = report["incident-causes-mentioned-case"]
    assert (causes["all_time"]["matched"], causes["all_time"]["links_planned"]) == (2, 2)
    assert (causes["window"]["matched"], causes["window"]["links_planned"]) == (1, 1)
    assert causes["flags"] == []
    assert report["page-escalates-to-mentioned-case"]["flags"] == ["no match in 30d", "1 example(s) fail"]
    assert report["case-relates-to-mentioned-case"]["flags"] == ["no match in 30d"]
    table = invoke(runner, "rules", "stats", "--rules", str(rules)).output
    assert "! 1 example(s) fail" in table
    assert "last 30d" in table


def test_db_prune_deletes_events_past_retention_after_counting_them_and_a_dry_run_changes_nothing(
    service, client, runner
):
    old = receive_at(service, time.time() - 40 * DAY)
    young = receive(client)

    preview = invoke(runner, "db", "prune", "--dry-run")
    assert preview.exit_code == 0, preview.output
    assert service.store.get_event(old)["id"] == old
    pruned = invoke(runner, "db", "prune")

    assert "would delete 0" in preview.output  # not yet counted in the statistics: never pruned
    assert "deleted 1, kept 0" in pruned.output
    assert [row["id"] for row in service.store.find_events()] == [young]
    assert service.store.rule_stats(None)["incident-causes-mentioned-case"].matched == 2
    assert len(service.store.list_links()) == 2


def test_links_retry_of_a_dry_run_link_while_in_dry_run_says_why_and_changes_nothing(client, runner, store):
    receive(client)
    [link] = store.list_links()

    result = invoke(runner, "links", "retry", str(link["id"]))

    assert result.exit_code == 1
    assert "cannot be sent until DD_API_KEY and DD_APP_KEY are set" in result.output
    assert store.list_links() == [link]


def test_event_retention_and_since_take_the_same_durations():
    assert Settings.from_env({"EVENT_RETENTION": "7d"}).event_retention == 7 * DAY
    assert Settings.from_env({}).event_retention == 30 * DAY
    with pytest.raises(ConfigError, match=r"EVENT_RETENTION: '30 days' is not a duration; use .* 24h"):
        Settings.from_env({"EVENT_RETENTION": "30 days"})
    with pytest.raises(ConfigError, match="EVENT_RETENTION='5m' must be at least 3600 seconds"):
        Settings.from_env({"EVENT_RETENTION": "5m"})


def test_an_event_waiting_for_its_evaluation_is_listed_as_deferred_and_then_as_what_it_planned(service, runner):
    from caselink.rules import Evaluation

    event = Event(
        source="datadog",
        kind="incident.created",
        dedup_key="late",
        entity=EntityRef("INCIDENT", str(uuid.uuid4())),
        title="Disk full, see OPS-7",
        severity="SEV-1",
        payload={"id": "late"},
    )
    [stored] = service.store.record([(event, Evaluation.deferral("later"))], ruleset="", dry_run=True)

    def ids(*args):
        result = invoke(runner, "events", "list", "--json", *args)
        assert result.exit_code == 0, result.output
        return [row["id"] for row in json.loads(result.output)]

    assert ids("--outcome", "deferred") == [stored.id]
    assert ids("--outcome", "not-linked") == []
    assert "links=deferred" in invoke(runner, "events", "list").output

    assert service.evaluate_deferred() == 1

    assert ids("--outcome", "deferred") == []
    assert ids("--outcome", "linked") == [stored.id]
