"""Schema migrations (Alembic), run by `flask --app app db upgrade` and the Procfile's release phase."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

_HERE = Path(__file__).resolve().parent


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    config.attributes["engine"] = engine
    return config


@cache
def head_revision() -> str:
    head = ScriptDirectory(str(_HERE)).get_current_head()
    assert head is not None
    return head


@cache
def known_revisions() -> frozenset[str]:
    return frozenset(script.revision for script in ScriptDirectory(str(_HERE)).walk_revisions())


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def create(engine: Engine) -> None:
    """Create the SQLite database file (and its folder) if it is not there: only upgrading does."""
    from caselink.store.sqlite import create_sqlite_file

    if engine.dialect.name == "sqlite":
        create_sqlite_file(engine.url)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision`, creating a SQLite database that is not there yet."""
    create(engine)
    command.upgrade(alembic_config(engine), revision)
