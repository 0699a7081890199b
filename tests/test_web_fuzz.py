"""Generated hostile requests to every webhook source and the admin API: never a 5xx.

The WSGI app is driven in process (webhooks are answered in front of Flask,
caselink/web.py), on SQLite and on PostgreSQL; transport-level cases (chunked
framing) go through gunicorn in tests/test_intake_e2e.py, and a longer run of
the same strategies is bench/fuzz_requests.py.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from caselink import migrations
from caselink.config import Secret
from caselink.config import Settings
from tests.conftest import fixture_bytes
from tests.hostile_requests import SECRETS
from tests.hostile_requests import Case
from tests.hostile_requests import cases
from tests.hostile_requests import webhook_cases
from tests.servers import ADMIN_TOKEN
from tests.servers import ROOT
from tests.servers import WEBHOOK_SECRET

FUZZ = hypothesis_settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fuzzed_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    from app import create_app

    url = f"sqlite:///{tmp_path / 'fuzz.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    application = create_app(
        Settings(
            database_url=url,
            rules_file=ROOT / "rules.yaml",
            webhook_secrets={source: (Secret(secret),) for source, secret in SECRETS.items()},
            admin_token=Secret(ADMIN_TOKEN),
            log_format="text",
            log_level="ERROR",
            max_body_bytes=256 * 1024,
        )
    )
    service = application.extensions["caselink"]
    migrations.upgrade(service.store.engine)
    yield application
    service.store.dispose()


def send(client: Any, case: Case) -> Any:
    return client.open(case.path, method=case.method, headers=case.headers, data=case.body)


def assert_answered(case: Case, answer: Any) -> None:
    assert answer.status_code < 500, f"{answer.status_code} for {case!r}: {answer.get_data()[:500]!r}"
    if answer.status_code >= 400 and case.method != "HEAD":
        error = answer.get_json(silent=True)
        assert error is not None, f"{answer.status_code} without JSON for {case!r}"
        assert error["error"]["code"], error


@hypothesis_settings(FUZZ, max_examples=1000)
@given(case=cases())
def test_no_generated_request_gets_a_5xx(fuzzed_app, case):
    assert_answered(case, send(fuzzed_app.test_client(), case))


@FUZZ
@given(case=webhook_cases())
def test_a_refused_webhook_stores_nothing_but_its_rejection(fuzzed_app, case):
    store = fuzzed_app.extensions["caselink"].store
    before = store.list_events(limit=1)
    answer = send(fuzzed_app.test_client(), case)
    assert_answered(case, answer)
    if answer.status_code >= 400:
        after = store.list_events(limit=2)
        new = [event for event in after if not before or event["id"] > before[0]["id"]]
        # Only an authenticated body that cannot be read (400, 415) is kept, as a rejected delivery.
        allowed = ([], ["rejected"]) if answer.status_code in (400, 415) else ([],)
        assert [event["kind"] for event in new] in allowed, (case, answer.status_code, new)


# -- the transport, through gunicorn ------------------------------------------------------

HEX_ISH = "0123456789abcdefABCDEF-xz ;=\"\t"


@st.composite
def framed_bodies(draw: st.DrawFn) -> bytes:
    """The end of the headers and a body framed chunked or by Content-Length, often wrongly."""
    payload = draw(st.sampled_from([b"{}", b'{"event": "x"}', b"[" * 70 + b"]" * 70, b"not json"]))
    if draw(st.booleans()):
        chunks = []
        for piece in (payload[: len(payload) // 2], payload[len(payload) // 2 :]):
            size = draw(st.sampled_from([f"{len(piece):x}"] * 3) | st.text(HEX_ISH, max_size=6))
            chunks.append(size.encode() + b"\r\n" + piece + draw(st.sampled_from([b"\r\n"] * 3 + [b"", b"XX"])))
        ending = draw(st.sampled_from([b"0\r\n\r\n"] * 3 + [b"", b"0\r\n", b"zz\r\n\r\n"]))
        head = b"Transfer-Encoding: chunked\r\n"
        if draw(st.booleans()):
            head += b"Content-Length: " + str(len(payload)).encode() + b"\r\n"
        return head + b"\r\n" + b"".join(chunks) + ending
    declared = draw(st.sampled_from([len(payload)] * 2 + [len(payload) + 5, max(0, len(payload) - 1)]))
    return b"Content-Length: " + str(declared).encode() + b"\r\n\r\n" + payload


def first_status(port: int, request: bytes) -> bytes:
    """The status line of the answer to `request`, sent whole and followed by the end of sending:
    a body cut short then ends, where a client that waits would wait as long as the server does."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        connection.shutdown(socket.SHUT_WR)
        answer = b""
        while b"\r\n" not in answer:
            chunk = connection.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.partition(b"\r\n")[0]


@pytest.mark.slow
def test_no_framing_of_a_webhook_body_gets_a_5xx_through_gunicorn(stack):
    web = stack.service(DRY_RUN="true")
    head = (
        b"POST /webhooks/datadog HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + WEBHOOK_SECRET.encode() + b"\r\n"
    )
    seen: set[bytes] = set()

    @hypothesis_settings(FUZZ, max_examples=150)
    @given(rest=framed_bodies())
    def framing(rest: bytes) -> None:
        status = first_status(web.port, head + rest)
        seen.add(status)
        assert status.startswith(b"HTTP/1.1 "), (status, rest)
        assert not status.startswith(b"HTTP/1.1 5"), (status, rest)

    framing()
    good = fixture_bytes("datadog", "incident-created.json")
    assert web.post("datadog", good).status_code == 202
    assert any(status.startswith(b"HTTP/1.1 400") for status in seen)
