"""Real payload shapes that broke caselink (tests/fixtures/intake, from ../shared/cases/intake) through gunicorn.

Each test is self-contained: its own processes, rules and database.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.conftest import fixture_bytes
from tests.handlers.conftest import pagerduty_signature
from tests.servers import flask

pytestmark = pytest.mark.slow


def _kinds_rules() -> str:
    # Two rules for the same kind, one written canonically and one as Datadog fills
    # `alert.$ALERT_TRANSITION`; dry-run, so the trace says what matched and nothing is sent.
    return """
version: 1
rules:
  - name: no-data-canonical
    mode: dry-run
    on: {source: datadog, kind: alert.no_data}
    link: {relationship: RELATES_TO, parent: {type: CASE, id: OPS-1}, child: {type: CASE, id: OPS-2}}
  - name: no-data-as-datadog-writes-it
    mode: dry-run
    on: {source: datadog, kind: alert.No Data}
    link: {relationship: RELATES_TO, parent: {type: CASE, id: OPS-3}, child: {type: CASE, id: OPS-4}}
  - name: triggered-as-datadog-writes-it
    mode: dry-run
    on: {source: datadog, kind: [alert.Triggered, alert.Re-Triggered]}
    link: {relationship: RELATES_TO, parent: {type: CASE, id: OPS-5}, child: {type: CASE, id: OPS-6}}
  - name: any-monitor-glob
    mode: dry-run
    on: {source: datadog, kind: "Alert.*"}
    link: {relationship: RELATES_TO, parent: {type: CASE, id: OPS-7}, child: {type: CASE, id: OPS-8}}
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def intake_database(request: pytest.FixtureRequest, tmp_path) -> str:
    """Each store in turn; set up before `stack`, so the database outlives the processes using it."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'intake.db'}"
    return request.getfixturevalue("postgres_url")


def _matched(web, event_id: int) -> list[str]:
    record = web.api(f"/api/events/{event_id}").json()
    return [outcome["rule"] for outcome in record["rules"] if outcome["outcome"] == "matched"]


def test_intake_datadog_monitor_kinds_are_canonical_and_rules_written_either_way_match(
    intake_database, stack, tmp_path
):
    database = intake_database
    rules = tmp_path / "kinds.yaml"
    rules.write_text(_kinds_rules())
    web = stack.service(RULES_FILE=str(rules), DATABASE_URL=database)
    expected = {
        "dd-monitor-nodata.json": ("alert.no_data", ["no-data-canonical", "no-data-as-datadog-writes-it"]),
        "dd-monitor-noevent.json": ("alert.no_data", ["no-data-canonical", "no-data-as-datadog-writes-it"]),
        "dd-monitor-triggered.json": ("alert.triggered", ["triggered-as-datadog-writes-it"]),
    }

    for name, (kind, rule_names) in expected.items():
        body = fixture_bytes("intake", name)

        answer = web.post("datadog", body)

        assert answer.status_code == 202, f"{name}: {answer.text}"
        [event] = answer.json()["events"]
        assert event["kind"] == kind, name
        assert _matched(web, event["id"]) == [*rule_names, "any-monitor-glob"], name
        assert web.api(f"/api/events/{event['id']}").json()["kind"] == kind
        again = web.post("datadog", body)
        assert again.status_code == 200, f"{name} again: {again.text}"
        assert again.json()["events"][0]["duplicate"] is True

    assert [event["kind"] for event in web.api("/api/events").json()["events"]] == [
        "alert.triggered",
        "alert.no_data",
        "alert.no_data",
    ]


def test_intake_replay_reads_a_kind_stored_before_canonical_kinds_as_canonical(intake_database, stack, tmp_path):
    database = intake_database
    empty = tmp_path / "none.yaml"
    empty.write_text("version: 1\nrules: []\n")
    web = stack.service(RULES_FILE=str(empty), DATABASE_URL=database)
    answer = web.post("datadog", fixture_bytes("intake", "dd-monitor-nodata.json"))
    assert answer.status_code == 202, answer.text
    engine = sa.create_engine(database.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as connection:
        # As an older release stored it: the kind exactly as Datadog filled the template.
        connection.execute(sa.text("UPDATE events SET kind = 'alert.No Data'"))
    engine.dispose()
    rules = tmp_path / "kinds.yaml"
    rules.write_text(_kinds_rules())

    replay = flask(stack.env(DATABASE_URL=database), "replay", "--since", "1h", "--rules", str(rules))

    assert replay.returncode == 0, replay.stderr
    assert "+ event 1: CASE:OPS-1 RELATES_TO CASE:OPS-2  (rule no-data-canonical)" in replay.stdout
    assert "+ event 1: CASE:OPS-3 RELATES_TO CASE:OPS-4  (rule no-data-as-datadog-writes-it)" in replay.stdout
    assert [event["kind"] for event in web.api("/api/events").json()["events"]] == ["alert.no_data"]


def test_intake_pagerduty_events_outside_an_incident_carry_their_tags(stack, tmp_path):
    secret = "pd-intake-secret"
    rules = tmp_path / "pd.yaml"
    rules.write_text(
        """
version: 1
rules:
  - name: apis-workflow
    mode: dry-run
    on: {source: pagerduty, kind: incident.workflow.completed}
    when: [{field: tags.service, equals: APIs}]
    link: {relationship: RELATES_TO, parent: {type: CASE, id: OPS-1}, child: {type: CASE, id: OPS-2}}
  - name: apis-responder
    mode: dry-run
    on: {source: pagerduty, kind: Incident.Responder.Added}
    when: [{field: tags.escalation_policy, equals: APIs-ep}]
    link: {relationship: RELATES_TO, parent: {type: CASE, id: OPS-3}, child: {type: CASE, id: OPS-4}}
"""
    )
    web = stack.service(RULES_FILE=str(rules), PAGERDUTY_WEBHOOK_SECRET=secret)
    expected = {
        "pd-workflow-completed.json": ("incident.workflow.completed", {"service": ["APIs"]}, "apis-workflow"),
        "pd-responder-added.json": ("incident.responder.added", {"escalation_policy": ["APIs-ep"]}, "apis-responder"),
    }

    for name, (kind, tags, rule) in expected.items():
        body = fixture_bytes("intake", name)
        signed = {"X-PagerDuty-Signature": pagerduty_signature(body, secret), "X-Webhook-Id": name}

        answer = web.post("pagerduty", body, headers=signed, token=None)

        assert answer.status_code == 202, f"{name}: {answer.text}"
        [event] = answer.json()["events"]
        record = web.api(f"/api/events/{event['id']}").json()
        assert (record["kind"], record["tags"]) == (kind, tags)
        assert _matched(web, event["id"]) == [rule]
        assert web.post("pagerduty", body, headers=signed, token=None).status_code == 200
