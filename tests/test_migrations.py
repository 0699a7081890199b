"""Schema migrations: an empty database, one made by the previous release, and a schema caselink does not know."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from caselink import migrations
from caselink.errors import SchemaError
from caselink.events import Event
from caselink.rules import parse_rules
from caselink.schema import metadata
from caselink.store import Store
from tests.servers import flask


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'migrations.db'}"
    return request.getfixturevalue("postgres_url").replace("postgresql://", "postgresql+psycopg://", 1)


def test_upgrade_builds_exactly_the_schema_the_code_uses_from_an_empty_database(url):
    store = Store(url)
    migrations.upgrade(store.engine)

    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []
    store.check_schema()
    store.dispose()


def test_a_database_made_by_the_previous_release_upgrades_and_keeps_its_data(url):
    engine = sa.create_engine(url)
    migrations.upgrade(engine, "0001")
    now = time.time()
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO events (source, dedup_key, kind, title, message, severity, priority, status, url, tags,"
                " received_at, ruleset, trace, links_planned) VALUES ('datadog', 'k1', 'incident.created', 't', '', '',"
                " '', '', '', '{}', :now, 'abc', '[]', 1)"
            ),
            {"now": now},
        )
        connection.execute(
            sa.text(
                "INSERT INTO links (parent_type, parent_ref, relationship, child_type, child_ref, state, attempts,"
                " next_attempt_at, created_at, updated_at) VALUES ('INCIDENT', '01c03111-172a-50c7-8df3-d61e64b0e74b',"
                " 'CAUSES', 'CASE', 'OPS-42', 'pending', 0, :now, :now, :now)"
            ),
            {"now": now},
        )
    store = Store(url)
    with pytest.raises(SchemaError, match="bin/caselink db upgrade"):
        store.check_schema()

    migrations.upgrade(store.engine)

    store.check_schema()
    assert [event["kind"] for event in store.list_events()] == ["incident.created"]
    [job] = store.claim("worker-after-upgrade", 5, lease=30)
    assert str(job) == "INCIDENT:01c03111-172a-50c7-8df3-d61e64b0e74b CAUSES CASE:OPS-42"
    assert store.get_link(job.id)["claimed_by"] == "worker-after-upgrade"
    store.dispose()
    engine.dispose()


def test_an_empty_database_is_refused_with_the_command_to_run(url):
    store = Store(url)
    with pytest.raises(SchemaError, match="no caselink schema; run `bin/caselink db upgrade`"):
        store.check_schema()
    store.dispose()


def test_a_schema_from_a_newer_release_is_refused(url):
    store = Store(url)
    migrations.upgrade(store.engine)
    with store.engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))

    with pytest.raises(SchemaError, match="does not know"):
        store.check_schema()
    store.dispose()


@pytest.mark.slow
def test_gunicorn_refuses_to_start_on_an_old_schema_and_says_what_to_run(stack):
    env = stack.env()
    engine = sa.create_engine(stack.database_url)
    migrations.upgrade(engine, "0001")
    engine.dispose()

    web = stack.service(migrate=False, wait=False)
    web.popen.wait(30)

    assert web.popen.returncode != 0
    assert "this release needs" in web.logs()
    assert "bin/caselink db upgrade" in web.logs()
    result = flask(env, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert f"0001 -> {migrations.head_revision()}" in result.stdout


def test_events_stored_before_digests_keep_an_empty_digest_and_a_downgrade_keeps_every_event(url):
    from alembic import command

    from caselink.events import Event
    from caselink.rules import Evaluation

    engine = sa.create_engine(url)
    migrations.upgrade(engine, "0002")
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO events (source, dedup_key, kind, title, message, severity, priority, status, url, tags,"
                " received_at, ruleset, trace, links_planned) VALUES ('datadog', 'k1', 'incident.created', 't', '', '',"
                " '', '', '', '{}', 1.0, 'abc', '[]', 0)"
            )
        )
    migrations.upgrade(engine)
    store = Store(url)
    [old] = store.list_events()
    assert (store.get_event(old["id"])["digest"], store.get_event(old["id"])["dedup_conflict"]) == ("", False)

    recorded = store.record(
        [(Event("datadog", "incident.created", "k1", payload={"v": version}), Evaluation([])) for version in (1, 2)],
        ruleset="abc",
        dry_run=True,
    )
    # The old row's content is unknown: a retry of it is stored once more, no conflict; the
    # second delivery repeats the first one's key with other content, which is one.
    assert [(event.duplicate, event.dedup_conflict) for event in recorded] == [(False, False), (False, True)]
    store.dispose()

    command.downgrade(migrations.alembic_config(engine), "0002")

    with engine.connect() as connection:
        keys = connection.execute(sa.text("SELECT id, dedup_key FROM events ORDER BY id")).all()
    assert [key for _, key in keys][0] == "k1"
    assert len(keys) == 3
    assert len({key for _, key in keys}) == 3
    assert all(key.startswith("k1#") and len(key) == len("k1#") + 64 for _, key in keys[1:])
    engine.dispose()


def test_traces_stored_in_full_are_compacted_by_0005_when_their_rule_set_is_in_force_and_read_the_same(url):
    from caselink.schema import events
    from caselink.schema import rule_sets
    from caselink.traces import event_from_row
    from tests.rule_files import generated_rules_text as rules_text
    from tests.test_traces import incident

    ruleset = parse_rules(rules_text(150))
    other = parse_rules(rules_text(3))
    engine = sa.create_engine(url)
    migrations.upgrade(engine, "0004")
    added = {"rule": "later", "outcome": "matched", "reason": "planned by `replay --apply`", "links": []}
    made = {
        "k1": (ruleset.digest, ruleset.evaluate_linear(incident("k1")).trace()),
        "k2": (ruleset.digest, [*ruleset.evaluate_linear(incident("k2")).trace(), added]),
        # Made by rules whose text nobody kept: left in full.
        "k3": (other.digest, other.evaluate_linear(incident("k3")).trace()),
    }
    # The events table as 0004 left it: without the columns later revisions add.
    events_0004 = sa.Table(
        "events", sa.MetaData(), *(column._copy() for column in events.c if column.name != "deferred")
    )
    with engine.begin() as connection:
        for key, (digest, trace) in made.items():
            row = traces_row(incident(key))
            connection.execute(events_0004.insert().values(**row, ruleset=digest, trace=trace))

    migrations.upgrade(engine, rule_set=ruleset)

    store = Store(url)
    with engine.connect() as connection:
        stored = {row.dedup_key: row for row in connection.execute(sa.select(events)).all()}
        kept = connection.execute(sa.select(rule_sets.c.digest, rule_sets.c.text)).all()
    assert kept == [(ruleset.digest, ruleset.text)]
    assert isinstance(stored["k1"].trace, dict)
    assert isinstance(stored["k2"].trace, dict)
    assert stored["k3"].trace == made["k3"][1]
    for key, (_, trace) in made.items():
        assert store.get_event(stored[key].id)["rules"] == trace
    assert event_from_row(dict(stored["k1"]._mapping)).title == "payments down, OPS-7"
    store.dispose()

    migrations.downgrade(engine, "0004")

    with engine.connect() as connection:
        after = dict(connection.execute(sa.select(events.c.dedup_key, events.c.trace)).all())
    assert after == {key: trace for key, (_, trace) in made.items()}
    engine.dispose()


def traces_row(event: Event) -> dict[str, Any]:
    """An events row at revision 0004, as the store wrote one."""
    return {
        "source": event.source,
        "dedup_key": event.dedup_key,
        "digest": event.dedup_key,
        "dedup_conflict": False,
        "kind": event.kind,
        "entity_type": event.entity.type,
        "entity_id": event.entity.id,
        "title": event.title,
        "message": event.message,
        "severity": event.severity,
        "priority": event.priority,
        "status": event.status,
        "url": event.url,
        "tags": dict(event.tags),
        "occurred_at": event.occurred_at,
        "payload": event.payload,
        "problem": event.problem,
        "received_at": 1.0,
        "links_planned": 0,
    }
