"""The dedup rule, for every sender, on SQLite and PostgreSQL: a repeat is the same key and the same content.

Hypothesis sends sequences of notifications drawn from two delivery ids and
three texts through the whole ingest path (handler, rules, store) and checks
each answer against a model: same key + same content is a duplicate that
changes nothing; same key + other content is a new event, marked and counted.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from caselink import migrations
from caselink.config import Settings
from caselink.events import Headers
from caselink.events import WebhookRequest
from tests.senders import SOURCES
from tests.senders import dedup_key
from tests.senders import notification

RULES = """
version: 1
rules:
  - name: any-event-mentioning-a-case-relates-it-to-ops-1
    link:
      relationship: RELATES_TO
      parent: {type: CASE, find: {in: [title], pattern: '\\b[A-Z]{2,9}-\\d+\\b'}}
      child: {type: CASE, id: OPS-1}
"""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def service(request, tmp_path: Path) -> Iterator[Any]:
    """The ingest path in dry-run, no secrets (every source open), on a fresh database."""
    from app import create_app

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'dedup.db'}"
    else:
        url = request.getfixturevalue("postgres_url").replace("postgresql://", "postgresql+psycopg://", 1)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    application = create_app(Settings(database_url=url, rules_file=rules, log_format="text"))
    built = application.extensions["caselink"]
    migrations.upgrade(built.store.engine)
    yield built
    built.stop_worker(grace=1)
    built.store.dispose()


def deliver(service: Any, source: str, ident: str, text: str) -> Any:
    body, headers = notification(source, ident, text)
    return service.ingest(WebhookRequest(source, body, Headers(headers), "application/json", 1_764_151_200.0))


deliveries = st.lists(st.tuples(st.sampled_from("ab"), st.sampled_from(["OPS-1", "OPS-2", "OPS-3"])), max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=st.sampled_from(SOURCES), sequence=deliveries)
def test_same_key_and_content_is_a_duplicate_and_same_key_with_other_content_a_new_event(service, source, sequence):
    run = uuid.uuid4().hex[:12]  # examples share the database; each has keys of its own
    stored: dict[tuple[str, str], int] = {}
    keys_seen: set[str] = set()

    for letter, text in sequence:
        ident = f"{run}-{letter}"
        answer = deliver(service, source, ident, f"Disk full, see {text}")
        [event] = answer.events

        if (ident, text) in stored:
            assert answer.status == 200
            assert event["duplicate"] is True
            assert event["id"] == stored[ident, text]
        else:
            assert answer.status == 202
            assert event["duplicate"] is False
            assert event.get("dedup_conflict", False) is (ident in keys_seen)
            assert event["id"] not in stored.values()
            stored[ident, text] = event["id"]
            record = service.store.get_event(event["id"])
            assert record["dedup_key"] == dedup_key(source, ident)
            assert record["title"] == f"Disk full, see {text}"
            assert record["dedup_conflict"] is (ident in keys_seen)
            assert len(record["digest"]) == 64
        keys_seen.add(ident)

    mine = [event for event in service.store.list_events(limit=500) if event["id"] in stored.values()]
    assert len(mine) == len(stored)
    # A link is planned by every new event and still stored once per (parent, relationship, child).
    links = [link["parent"] for link in service.store.list_links(limit=1000)]
    assert len(links) == len(set(links))
