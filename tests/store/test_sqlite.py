"""SQLite's files under a running store: a -wal or -shm that goes is noticed; only upgrading creates a database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from caselink import migrations
from caselink.errors import SchemaError
from caselink.errors import StoreUnavailableError
from caselink.store import Store
from caselink.store.sqlite import DatabaseFile
from tests.store.builders import event
from tests.store.builders import event_ids
from tests.store.builders import planning


@pytest.fixture
def sqlite_store(tmp_path: Path):
    built = Store(f"sqlite:///{tmp_path / 'store.db'}")
    migrations.upgrade(built.engine)
    yield built
    built.dispose()


def record(store: Store, key: str) -> None:
    store.record([(event(key), planning())], ruleset="abc", dry_run=False)


@pytest.mark.parametrize("gone", [("-wal",), ("-shm",), ("-wal", "-shm")])
def test_a_write_after_its_wal_or_shm_went_is_refused_then_goes_to_new_files_and_nothing_is_lost(
    sqlite_store, tmp_path, gone
):
    record(sqlite_store, "before")
    for suffix in gone:
        (tmp_path / f"store.db{suffix}").unlink()

    with pytest.raises(StoreUnavailableError, match="deleted or replaced"):
        record(sqlite_store, "refused")
    record(sqlite_store, "after")
    sqlite_store.dispose()

    reopened = Store(sqlite_store.url)
    try:
        assert {"before", "after"} <= set(event_ids(reopened))
    finally:
        reopened.dispose()


def test_a_wal_replaced_by_another_file_is_noticed_like_a_deleted_one(sqlite_store, tmp_path):
    record(sqlite_store, "before")
    wal = tmp_path / "store.db-wal"
    wal.rename(tmp_path / "elsewhere")
    wal.write_bytes(b"")

    with pytest.raises(StoreUnavailableError) as refused:
        sqlite_store.set_state("probe", "1")

    assert "store.db-wal was deleted or replaced" in refused.value.operator
    assert str(tmp_path) not in refused.value.message
    sqlite_store.set_state("probe", "2")
    assert sqlite_store.get_state("probe") == "2"


def test_the_files_sqlite_keeps_beside_the_database_are_not_taken_for_replaced_ones(sqlite_store):
    for index in range(50):
        record(sqlite_store, f"e{index}")
        sqlite_store.set_state("probe", str(index))

    assert len(event_ids(sqlite_store)) == 50


def test_a_store_on_a_path_with_no_file_creates_none_and_says_to_upgrade(tmp_path):
    path = tmp_path / "missing" / "caselink.db"
    store = Store(f"sqlite:///{path}")
    try:
        with pytest.raises(SchemaError, match="run `bin/caselink db upgrade` to create it"):
            store.check_schema()
        with pytest.raises(StoreUnavailableError):
            store.count_events()
    finally:
        store.dispose()

    assert not path.parent.exists()
    upgraded = Store(f"sqlite:///{path}")
    migrations.upgrade(upgraded.engine)
    upgraded.dispose()
    assert path.exists()


def test_the_file_check_after_a_commit_asks_where_it_went_not_whether_the_files_can_still_be_written(
    sqlite_store, monkeypatch
):
    # Read-only files refuse the next write (a SIGBUS risk); a commit already made is stored all the
    # same, so the check that follows it looks only for replaced files. (access(2) is faked: as root
    # every file can be written.)
    record(sqlite_store, "before")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    file = DatabaseFile(sqlite_store.url.removeprefix("sqlite:///"))

    with pytest.raises(StoreUnavailableError, match="read-only"):
        file.check()
    assert file.check(writable=False) is False
