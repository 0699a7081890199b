"""Generated hostile requests to every webhook source and the admin API: never a 5xx.

The WSGI app is driven in process (webhooks are answered in front of Flask,
caselink/web.py), on SQLite and on PostgreSQL; transport-level cases (chunked
framing) go through gunicorn in tests/test_intake_e2e.py, and a longer run of
the same strategies is bench/fuzz_requests.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings as hypothesis_settings

from caselink import migrations
from caselink.config import Secret
from caselink.config import Settings
from tests.hostile import SECRETS
from tests.hostile import Case
from tests.hostile import cases
from tests.hostile import webhook_cases
from tests.servers import ADMIN_TOKEN
from tests.servers import ROOT

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


@FUZZ.__class__(FUZZ, max_examples=1000)
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
