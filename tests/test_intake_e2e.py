"""Real payload shapes that broke caselink (tests/fixtures/intake, from ../shared/cases/intake) through gunicorn.

Each test is self-contained: its own processes, rules and database.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa

from tests.conftest import FIXTURES
from tests.conftest import fixture_bytes
from tests.fake_datadog import case_uuid
from tests.handlers.conftest import grafana_signature
from tests.handlers.conftest import pagerduty_signature
from tests.handlers.conftest import standard_headers
from tests.hostile_requests import ENV as MALFORMED_ENV
from tests.hostile_requests import authenticate as malformed_authenticate
from tests.senders import SOURCES
from tests.senders import notification
from tests.servers import WEBHOOK_SECRET
from tests.servers import flask
from tests.servers import wait_for

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


# -- dedup: a key must never merge two different notifications ----------------------------


def dedup_secrets() -> dict[str, str]:
    return {
        "PAGERDUTY_WEBHOOK_SECRET": "pd-dedup-secret",
        "OPSGENIE_WEBHOOK_SECRET": "og-dedup-token",
        "ALERTMANAGER_WEBHOOK_SECRET": "am-dedup-token",
        "GRAFANA_WEBHOOK_SECRET": "gf-dedup-secret",
        "GENERIC_WEBHOOK_SECRET": "whsec_ZGVkdXAtc3RhbmRhcmQtd2ViaG9va3Mtc2VjcmV0",
    }


def dedup_post(web, source: str, body: bytes, headers: dict[str, str] | None = None):
    """POST `body` to `source`, authenticated the way that sender does it."""
    secrets = dedup_secrets()
    headers = dict(headers or {})
    if source == "pagerduty":
        headers["X-PagerDuty-Signature"] = pagerduty_signature(body, secrets["PAGERDUTY_WEBHOOK_SECRET"])
        return web.post(source, body, headers=headers, token=None)
    if source == "grafana":
        stamp = str(int(time.time()))
        headers["X-Grafana-Alerting-Signature"] = grafana_signature(body, secrets["GRAFANA_WEBHOOK_SECRET"], stamp)
        headers["X-Grafana-Alerting-Timestamp"] = stamp
        return web.post(source, body, headers=headers, token=None)
    if source == "generic":
        msg_id = headers.pop("webhook-id")
        headers.update(standard_headers(msg_id, time.time(), body, secrets["GENERIC_WEBHOOK_SECRET"]))
        return web.post(source, body, headers=headers, token=None)
    token = secrets.get(f"{source.upper()}_WEBHOOK_SECRET")
    return web.post(source, body, headers=headers, **({"token": token} if token else {}))


def dedup_conflicts_counted(web) -> dict[str, float]:
    text = web.http.get(web.url + "/metrics", timeout=10).text
    found = re.findall(r'^caselink_dedup_conflicts_total\{source="(\w+)"\} ([0-9.e+]+)$', text, re.MULTILINE)
    return {source: float(count) for source, count in found}


def test_intake_opsgenie_escalations_of_one_alert_to_a_user_then_to_a_team_are_two_events(stack):
    web = stack.service(**dedup_secrets())
    to_user, to_team = (fixture_bytes("intake", f"og-escalate-{number}.json") for number in (1, 2))

    first = dedup_post(web, "opsgenie", to_user)
    second = dedup_post(web, "opsgenie", to_team)

    assert (first.status_code, second.status_code) == (202, 202), second.text
    assert [event["kind"] for event in first.json()["events"] + second.json()["events"]] == ["alert.escalate"] * 2
    assert first.json()["events"][0]["id"] != second.json()["events"][0]["id"]
    for body in (to_user, to_team):
        again = dedup_post(web, "opsgenie", body)
        assert again.status_code == 200, again.text
        assert again.json()["events"][0]["duplicate"] is True
    assert len(web.api("/api/events?source=opsgenie").json()["events"]) == 2


def test_intake_grafana_alerts_without_labels_fingerprint_or_start_are_two_events_titled_by_their_groups(stack):
    web = stack.service(**dedup_secrets())
    bodies = [fixture_bytes("intake", f"grafana-bare-{number}.json") for number in (1, 2)]

    answers = [dedup_post(web, "grafana", body) for body in bodies]

    assert [answer.status_code for answer in answers] == [202, 202], answers[1].text
    ids = [answer.json()["events"][0]["id"] for answer in answers]
    titles = [web.api(f"/api/events/{event_id}").json()["title"] for event_id in ids]
    assert titles == ["[FIRING:1] Disk full db-3 (OPS-42)", "[FIRING:1] Checkout latency (OPS-77)"]
    for body, event_id in zip(bodies, ids, strict=True):
        again = dedup_post(web, "grafana", body)
        assert again.status_code == 200, again.text
        assert again.json()["events"][0] == {
            "id": event_id,
            "kind": "alert.firing",
            "duplicate": True,
            "links_planned": 0,
        }
    assert len(web.api("/api/events?source=grafana").json()["events"]) == 2


def test_intake_a_signed_pagerduty_body_sent_again_under_other_delivery_ids_is_one_event(stack):
    web = stack.service(**dedup_secrets())
    body = fixture_bytes("pagerduty", "incident-triggered.json")

    first = dedup_post(web, "pagerduty", body, {"X-Webhook-Id": "delivery-1"})
    replays = [dedup_post(web, "pagerduty", body, {"X-Webhook-Id": f"forged-{n}"}) for n in range(3)]
    bare = dedup_post(web, "pagerduty", body)

    assert first.status_code == 202, first.text
    for answer in [*replays, bare]:
        assert answer.status_code == 200, answer.text
        assert answer.json()["events"][0]["id"] == first.json()["events"][0]["id"]
    assert len(web.api("/api/events?source=pagerduty").json()["events"]) == 1


def test_intake_every_sender_stores_a_key_repeated_with_other_content_as_a_new_event_counted_logged_and_linked_once(
    stack, fake_datadog, tmp_path
):
    fake_datadog.add_case("OPS-1")
    fake_datadog.add_case("OPS-42")
    rules = tmp_path / "dedup-rules.yaml"
    rules.write_text(
        "version: 1\nrules:\n"
        "  - name: a-mentioned-case-relates-to-ops-1\n"
        "    link:\n"
        "      relationship: RELATES_TO\n"
        "      parent: {type: CASE, find: {in: [title], pattern: '\\bOPS-\\d+\\b'}}\n"
        "      child: {type: CASE, id: OPS-1}\n"
    )
    web = stack.service(RULES_FILE=str(rules), **dedup_secrets())

    for source in SOURCES:
        first_body, first_ids = notification(source, f"{source}-1", "Disk full on db-3, see OPS-42")
        other_body, other_ids = notification(source, f"{source}-1", "Disk full on db-3 and db-4, see OPS-42")

        first = dedup_post(web, source, first_body, first_ids)
        other = dedup_post(web, source, other_body, other_ids)

        assert first.status_code == 202, f"{source}: {first.text}"
        assert other.status_code == 202, f"{source}: {other.text}"
        [stored], [conflict] = first.json()["events"], other.json()["events"]
        assert (conflict["duplicate"], conflict["dedup_conflict"]) == (False, True), source
        assert "dedup_conflict" not in stored
        assert conflict["links_planned"] == 1  # evaluated like any new event
        record = web.api(f"/api/events/{conflict['id']}").json()
        assert record["dedup_conflict"] is True
        assert record["same_key_events"] == [stored["id"]]
        assert "with different content: stored and evaluated as a new event" in record["dedup"]
        assert record["title"] == "Disk full on db-3 and db-4, see OPS-42"
        for body, ids, event_id in ((first_body, first_ids, stored["id"]), (other_body, other_ids, conflict["id"])):
            again = dedup_post(web, source, body, ids)
            assert again.status_code == 200, f"{source} retried: {again.text}"
            assert again.json()["events"][0]["id"] == event_id

    wait_for(lambda: dedup_conflicts_counted(web) == dict.fromkeys(SOURCES, 1.0), message="one conflict per sender")
    lines = [json.loads(line) for line in web.logs().splitlines() if line.startswith("{")]
    flagged = [line for line in lines if line.get("msg") == "webhook" and line.get("dedup_conflict")]
    assert sorted(line["source"] for line in flagged) == sorted(SOURCES)
    assert len(web.api("/api/events?limit=100").json()["events"]) == 2 * len(SOURCES)
    # Every event planned OPS-42 RELATES_TO OPS-1: one link, created once.
    wait_for(lambda: web.api("/api/links?state=delivered").json()["links"], message="the link delivered")
    assert len(web.api("/api/links").json()["links"]) == 1
    assert fake_datadog.link_counts() == {("CASE", case_uuid("OPS-42"), "RELATES_TO", "CASE", case_uuid("OPS-1")): 1}


MALFORMED_RULES = r"""
version: 1
rules:
  - name: alert-message-names-a-case
    on: {source: datadog, kind: alert.triggered}
    link:
      relationship: RELATES_TO
      parent: {type: CASE, find: {in: [message], pattern: '\b[A-Z][A-Z0-9]{1,9}-\d+\b'}}
      child: {type: CASE, id: OPS-1}
"""

# Each gave 500 before; each must be a JSON 400 with this reason.
MALFORMED_BODIES = {
    "nested-979-deep": (b'{"event": "x", "data": ' + b"[" * 979 + b"]" * 979 + b"}", "too_deep"),
    "integer-of-4301-digits": (b'{"event": "x", "id": ' + b"1" * 4301 + b"}", "bad_number"),
    "escaped-lone-surrogate": (b'{"event": "x", "title": "\\ud800"}', "lone_surrogate"),
    "raw-surrogate-bytes": (b'{"event": "x", "title": "\xed\xa0\x80"}', "not_utf8"),
    "escaped-nul": (b'{"event": "x", "title": "a\\u0000b"}', "nul"),
    "nul-in-a-key": (b'{"event": "x", "tags": {"\\u0000": "a"}}', "nul"),
}


def _malformed_store(request: pytest.FixtureRequest, stack) -> dict[str, str]:
    """The environment overrides that put the service on the store the test is parametrised with."""
    if request.node.callspec.params.get("database") == "postgresql":
        return {"DATABASE_URL": request.getfixturevalue("postgres_url")}
    return {}


def _malformed_events(web) -> list[dict]:
    answer = web.api("/api/events?limit=500")
    assert answer.status_code == 200, answer.text
    return answer.json()["events"]


def test_a_datadog_body_with_a_raw_newline_keeps_it_and_plans_the_link(stack, tmp_path: Path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(MALFORMED_RULES)
    web = stack.service(RULES_FILE=str(rules), DRY_RUN="true")

    answer = web.post("datadog", (FIXTURES / "intake" / "dd-raw-newline.json").read_bytes())

    assert answer.status_code == 202, answer.text
    assert answer.json()["links_planned"] == 1
    event = web.api(f"/api/events/{answer.json()['events'][0]['id']}").json()
    assert event["message"] == "Disk full on db-3.\nRunbook: see OPS-42"
    assert [(link["parent"], link["child"]) for link in event["links"]] == [("CASE:OPS-42", "CASE:OPS-1")]


def test_a_datadog_body_that_cannot_be_read_is_400_and_kept_as_a_rejected_delivery(stack, tmp_path: Path):
    web = stack.service(DRY_RUN="true")
    body = (FIXTURES / "intake" / "dd-unescaped-quote.json").read_bytes()

    answer = web.post("datadog", body)
    stranger = web.post("datadog", body, token="not-the-secret")

    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["reason"] == "invalid_json"
    assert "line 1 column" in error["message"]
    assert stranger.status_code == 401
    # Only the authenticated delivery is kept: as a rejected event with its reason and raw text.
    [kept] = _malformed_events(web)
    assert (kept["id"], kept["source"], kept["kind"]) == (error["rejected_event"], "datadog", "rejected")
    assert kept["problem"] == error["message"]
    assert web.api(f"/api/events/{kept['id']}").json()["payload"] == body.decode()
    assert web.api("/api/links").json()["links"] == []
    listed = flask(stack.env(DRY_RUN="true"), "events", "list")
    assert listed.returncode == 0, listed.stderr
    assert "rejected" in listed.stdout
    assert "not valid JSON" in listed.stdout

    def counted() -> bool:
        metrics = web.http.get(web.url + "/metrics", timeout=5).text
        return 'caselink_rejected_deliveries_total{reason="invalid_json",source="datadog"} 1.0' in metrics

    wait_for(counted, timeout=5, message="the rejected delivery in /metrics")


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_malformed_json_is_a_json_400_that_stores_no_event_and_affects_no_other_request(request, stack, database):
    web = stack.service(DRY_RUN="true", **MALFORMED_ENV, **_malformed_store(request, stack))
    good = (FIXTURES / "datadog" / "incident-created.json").read_bytes()
    sent = 0
    for name, (body, reason) in MALFORMED_BODIES.items():
        form = urlencode({"event": "x", "data": body.decode("utf-8", "surrogateescape")}, errors="surrogateescape")
        for source, data, content_type in (
            ("datadog", body, "application/json"),
            ("datadog", form.encode(), "application/x-www-form-urlencoded"),
            ("pagerduty", body, "application/json"),
            ("generic", body, "application/json"),
        ):
            if content_type.endswith("urlencoded") and reason == "not_utf8":
                continue  # a form decodes percent-escapes leniently: not the same family
            headers = {"Content-Type": content_type, **malformed_authenticate(source, data, f"{name}-{sent}")}
            answer = web.post(source, data, headers=headers, token=None)
            sent += 1
            assert answer.status_code == 400, (name, source, content_type, answer.text)
            assert answer.json()["error"]["reason"] == reason, (name, source, answer.text)
            unsigned = web.post(source, data, token=None, content_type=content_type)
            assert unsigned.status_code == 401, (name, source, unsigned.text)
    assert {event["kind"] for event in _malformed_events(web)} == {"rejected"}
    assert web.api("/api/links").json()["links"] == []
    assert web.post("datadog", good).status_code == 202


def _malformed_raw_request(port: int, head: bytes, body: bytes, *, end_early: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(head + body)
        if end_early:
            connection.shutdown(socket.SHUT_WR)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _malformed_length(answer):
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def _malformed_length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 30


@pytest.mark.parametrize(
    ("body", "end_early"),
    [
        (b"zz\r\n{}\r\n0\r\n\r\n", False),
        (b"-5\r\n{}\r\n0\r\n\r\n", False),
        (b"64\r\n" + b'{"event": "cut short"', True),
        (b'2\r\n{}\r\n0\r\n\r\n'.replace(b"\r\n0", b"XX0"), False),
    ],
    ids=["size-zz", "size-minus-5", "truncated", "missing-terminator"],
)
def test_a_broken_chunked_body_is_a_json_400_and_other_requests_are_unaffected(stack, body, end_early):
    web = stack.service(DRY_RUN="true")
    head = (
        b"POST /webhooks/datadog HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + WEBHOOK_SECRET.encode() + b"\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    good = (FIXTURES / "datadog" / "incident-created.json").read_bytes()
    answers: list[int] = []

    def keep_sending() -> None:
        for n in range(20):
            answers.append(web.post("datadog", good.replace(b'"id"', f'"n": {n}, "id"'.encode(), 1)).status_code)

    others = threading.Thread(target=keep_sending)
    others.start()
    answer = _malformed_raw_request(web.port, head, body, end_early=end_early)
    others.join()

    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 400"), answer
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"]["code"] == "bad_request"
    assert set(answers) <= {200, 202}
    assert len(answers) == 20
    # A body that never arrived whole was never authenticated: nothing of it is kept.
    assert [event["kind"] for event in _malformed_events(web) if event["kind"] != "incident.created"] == []


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_admin_ids_beyond_64_bits_are_404_or_400(request, stack, database):
    web = stack.service(DRY_RUN="true", **_malformed_store(request, stack))
    beyond = "9223372036854775808"

    assert web.api(f"/api/events/{beyond}").status_code == 404
    assert web.api(f"/api/events/{'9' * 3000}").status_code == 404
    assert web.api(f"/api/links/{beyond}/retry", method="POST").status_code == 404
    for path in (f"/api/events?before={beyond}", f"/api/links?before={beyond}", "/api/events?source=%00"):
        answer = web.api(path)
        assert answer.status_code == 400, (path, answer.text)
        assert answer.json()["error"]["code"] == "bad_request"
    assert web.api("/api/events/9223372036854775807").status_code == 404


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_unstorable_webhooks_among_good_ones_fail_only_themselves(request, stack, database):
    # Issue 13: two senders post what the store cannot hold among eight posting good webhooks.
    web = stack.service(DRY_RUN="true", **_malformed_store(request, stack))
    template = json.loads((FIXTURES / "datadog" / "incident-created.json").read_bytes())
    bad_titles = ["a\\u0000b", "a\\ud800b"]
    statuses: dict[str, list[int]] = {"good": [], "bad": []}

    def sender(number: int, bad: bool) -> None:
        for n in range(25):
            payload = dict(template, id=f"mix-{number}-{n}")
            body = json.dumps(payload).encode()
            if bad:
                body = body.replace(b'"id"', f'"title": "{bad_titles[n % 2]}", "id"'.encode(), 1)
            statuses["bad" if bad else "good"].append(web.post("datadog", body).status_code)

    threads = [threading.Thread(target=sender, args=(number, number < 2)) for number in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert statuses["good"] == [202] * 200
    assert statuses["bad"] == [400] * 50


def test_a_body_left_unread_by_a_refusal_does_not_drop_the_kept_alive_connection(stack):
    web = stack.service(DRY_RUN="true")
    good = (FIXTURES / "datadog" / "incident-created.json").read_bytes()
    large = b'{"text": "' + b"x" * 100_000 + b'"}'
    headers = {"Authorization": f"Bearer {WEBHOOK_SECRET}", "Content-Type": "application/json"}

    for method, path, status in (
        ("PUT", "/webhooks/datadog", 405),
        ("POST", "/webhooks/nagios", 404),
        ("POST", "/webhooks/datadog/extra", 404),
    ):
        refused = web.http.request(method, web.url + path, data=large, headers=headers, timeout=10)
        assert refused.status_code == status
        # The same kept-alive connection carries the next webhook.
        assert web.http.post(web.url + "/webhooks/datadog", data=good, headers=headers, timeout=10).ok


def test_intake_every_links_planned_of_a_duplicate_answer_counts_what_this_request_planned(stack):
    web = stack.service(**dedup_secrets())
    body = fixture_bytes("datadog", "incident-created.json")

    first = web.post("datadog", body)
    again = web.post("datadog", body)

    assert first.status_code == 202, first.text
    assert [event["links_planned"] for event in first.json()["events"]] == [first.json()["links_planned"]] == [1]
    assert again.status_code == 200, again.text
    [event] = again.json()["events"]
    assert (event["duplicate"], event["links_planned"], again.json()["links_planned"]) == (True, 0, 0)
    # What the stored event planned stays in its explain record.
    assert web.api(f"/api/events/{event['id']}").json()["links_planned"] == 1


def test_intake_a_datadog_kind_field_without_letters_or_left_unfilled_falls_back_as_if_missing(stack):
    web = stack.service()
    bodies = {
        '{"id":"t1","alert":{"id":"1","title":"x","transition":"-"}}': "alert.notification",
        '{"id":"t2","event":"alert.","alert":{"id":"1","title":"x"}}': "alert.notification",
        '{"id":"t3","event":"alert.$ALERT_TRANSITION","alert":{"id":"1","title":"x"}}': "alert.notification",
        '{"id":"t4","event":"alert.$ALERT_TRANSITION","alert":{"id":"1","transition":"No Data"}}': "alert.no_data",
    }

    kinds = {body: web.post("datadog", body.encode()).json()["events"][0]["kind"] for body in bodies}

    assert kinds == bodies
