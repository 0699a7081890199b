"""Shared fixtures: settings and apps for unit tests, real processes for end-to-end tests."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck
from hypothesis import settings

from caselink import migrations
from caselink.config import Secret
from caselink.config import Settings
from tests.fake_datadog import FakeDatadog
from tests.servers import ADMIN_TOKEN
from tests.servers import ROOT
from tests.servers import WEBHOOK_SECRET
from tests.servers import Service
from tests.servers import Worker
from tests.servers import base_env
from tests.servers import flask

# Property tests judge the code, not the machine: a wall-clock deadline or a "too slow" health
# check fails on two shared cores under coverage now and then, whatever the code does. In CI the
# examples are drawn from a fixed seed, so a red run is the code's and can be run again as it was.
settings.register_profile("caselink", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", parent=settings.get_profile("caselink"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "caselink")

# Sample payloads as the senders send them (a copy of the product's shared fixtures).
FIXTURES = ROOT / "tests" / "fixtures"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def fixture_bytes(source: str, name: str) -> bytes:
    return (FIXTURES / source / name).read_bytes()


def fixture_json(source: str, name: str) -> Any:
    return json.loads(fixture_bytes(source, name))


# -- unit level -------------------------------------------------------------------


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'caselink.db'}"


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Dry-run settings (no Datadog keys) on a fresh SQLite file."""
    return Settings(
        database_url=database_url,
        rules_file=ROOT / "rules.yaml",
        webhook_secrets={"datadog": (Secret(WEBHOOK_SECRET),)},
        admin_token=Secret(ADMIN_TOKEN),
        log_format="text",
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[Any]:
    from app import create_app

    application = create_app(settings)
    service = application.extensions["caselink"]
    migrations.upgrade(service.store.engine)
    yield application
    service.stop_worker(grace=1)
    service.store.dispose()


@pytest.fixture
def service(app: Any) -> Any:
    return app.extensions["caselink"]


@pytest.fixture
def store(service: Any) -> Any:
    return service.store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def each_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A migrated store of its own, on SQLite and (with CASELINK_TEST_POSTGRES_URL) on PostgreSQL."""
    from caselink.store import Store

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url").replace("postgresql://", "postgresql+psycopg://", 1)
    built = Store(url)
    migrations.upgrade(built.engine)
    yield built
    built.dispose()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def runner(app: Any) -> Any:
    return app.test_cli_runner()


# -- PostgreSQL -------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The PostgreSQL to test against; skipped on a laptop without one, a failure in CI."""
    url = os.environ.get("CASELINK_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        message = f"PostgreSQL is not reachable at {url} ({str(exc.orig).splitlines()[0]})"
        if os.environ.get("CASELINK_REQUIRE_POSTGRES"):
            pytest.fail(message + "; CI requires it")
        pytest.skip(message + "; set CASELINK_TEST_POSTGRES_URL to run these tests")
    finally:
        engine.dispose()
    return url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"caselink_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(
        postgres_server.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    base = postgres_server.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


# -- end to end ---------------------------------------------------------------------


@pytest.fixture
def fake_datadog() -> Iterator[FakeDatadog]:
    fake = FakeDatadog().start()
    yield fake
    fake.stop()


class Stack:
    """Builds caselink processes wired to the fake Datadog; stops them all at the end."""

    def __init__(self, tmp_path: Path, fake: FakeDatadog) -> None:
        self.tmp_path = tmp_path
        self.fake = fake
        self.processes: list[Any] = []
        self.database_url = f"sqlite:///{tmp_path / 'caselink.db'}"

    def env(self, **overrides: Any) -> dict[str, str]:
        settings: dict[str, Any] = {
            "DD_API_KEY": self.fake.api_key,
            "DD_APP_KEY": self.fake.app_key,
            "DD_API_URL": self.fake.url,
            "DATABASE_URL": self.database_url,
            "DATADOG_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "RULES_FILE": str(ROOT / "rules.yaml"),
            "WEB_CONCURRENCY": "1",
            "WORKER_POLL_INTERVAL": "0.05",
            "DD_TIMEOUT": "2",
            "DELIVERY_LEASE": "10",
            "DELIVERY_BACKOFF_BASE": "0.05",
            "DELIVERY_BACKOFF_MAX": "0.5",
            "LOG_FORMAT": "json",
        }
        settings.update(overrides)
        return base_env(**settings)

    def migrate(self, env: dict[str, str] | None = None) -> None:
        result = flask(env or self.env(), "db", "upgrade")
        assert result.returncode == 0, result.stderr + result.stdout

    def service(self, name: str = "web", *, migrate: bool = True, wait: bool = True, **overrides: Any) -> Service:
        env = self.env(**overrides)
        if migrate:
            self.migrate(env)
        process = Service(name, env, self.tmp_path)
        self.processes.append(process)
        return process.start(wait=wait)

    def worker(self, name: str = "worker", **overrides: Any) -> Worker:
        process = Worker(name, self.env(**overrides), self.tmp_path)
        self.processes.append(process)
        process.start()
        return process

    def close(self) -> None:
        for process in self.processes:
            process.stop(timeout=15)
        broken = []
        for process in self.processes:
            output = process.logs()
            if output:
                print(f"----- {process.name} -----\n{output[-20000:]}")
            if "--- Logging error ---" in output:
                broken.append(process.name)
        # caselink shares the logging module with gunicorn: neither may break the other's lines.
        assert not broken, f"logging failed in {', '.join(broken)}; see their output above"


@pytest.fixture
def stack(tmp_path: Path, fake_datadog: FakeDatadog) -> Iterator[Stack]:
    built = Stack(tmp_path, fake_datadog)
    yield built
    built.close()
