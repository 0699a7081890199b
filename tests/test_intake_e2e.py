"""Real intake cases and malformed input, end to end through gunicorn on loopback.

Each test is self-contained (its own rules, its own helpers) so that cases
from several issues can live in this one file.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.conftest import FIXTURES
from tests.hostile import ENV as MALFORMED_ENV
from tests.hostile import authenticate as malformed_authenticate
from tests.servers import WEBHOOK_SECRET
from tests.servers import flask
from tests.servers import wait_for

pytestmark = pytest.mark.slow

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
