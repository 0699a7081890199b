"""The store of every store test: each runs on SQLite and, with CASELINK_TEST_POSTGRES_URL, on PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def store(each_store: Any) -> Any:
    return each_store
