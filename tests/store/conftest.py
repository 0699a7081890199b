"""The store of every store test: each runs on SQLite and, with CASELINK_TEST_POSTGRES_URL, on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from caselink import migrations
from caselink.store import Store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request, tmp_path: Path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url").replace("postgresql://", "postgresql+psycopg://", 1)
    built = Store(url)
    migrations.upgrade(built.engine)
    yield built
    built.dispose()
