"""The store's plumbing: the engine, transactions, the schema check, shared service state, and
what a database error means (unavailable, a 503; or the statement's fault).

Every concern of the store (`ingest`, `queue`, `ratelimit`, `reads`, `housekeeping`) is a
subclass of `Database` and reaches the database only through its transactions.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextlib import nullcontext
from operator import itemgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import OperationalError

from caselink import logs
from caselink.config import masked_url
from caselink.errors import SchemaError
from caselink.errors import StoreUnavailableError
from caselink.schema import service_state
from caselink.store.sqlite import DatabaseFile
from caselink.store.sqlite import Wakeup
from caselink.store.sqlite import WriteLock
from caselink.store.sqlite import sqlite_engine

# The service_state row that readiness commits to prove a write can commit.
HEARTBEAT_STATE = "store_heartbeat"
log = logs.get("store")


class Database:
    """The engine and its transactions; the store's concerns build on it (see caselink.store.Store)."""

    def __init__(self, url: str, *, pool_size: int = 5, report_unavailable: bool = True) -> None:
        self.url = url
        # False where the caller tells the operator itself (start-up checks, the command line).
        self.report_unavailable = report_unavailable
        self.dialect = "postgresql" if url.startswith("postgresql") else "sqlite"
        self._write_lock = WriteLock(url) if self.dialect == "sqlite" else None
        self._file: DatabaseFile | None = None
        if self.dialect == "sqlite":
            self.engine, self._file = sqlite_engine(url, pool_size=pool_size)
        else:
            self.engine = sa.create_engine(url, pool_size=pool_size, max_overflow=10, pool_pre_ping=True)
        self._insert = sqlite.insert if self.dialect == "sqlite" else postgresql.insert
        self._wake = Wakeup(url if self.dialect == "sqlite" else None)
        # The connection ingest batches keep between them; None while a batch uses it.
        self._ingest_connection: Any = None
        self._ingest_lock = threading.Lock()
        self._writable_until = 0.0
        self._reported: dict[str, float] = {}
        self._start()

    def _start(self) -> None:
        """Set up a concern's own state: each concern that keeps some overrides this and calls super."""

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Connection]:
        """One transaction; a database that cannot be reached or written (gone, locked,
        read-only, full, …) becomes StoreUnavailableError, a 503.

        On SQLite, writers queue on a lock file next to the database before
        BEGIN IMMEDIATE, so the kernel wakes the next writer the moment the
        last one commits instead of SQLite polling with sleeps of up to 100 ms.
        """
        guard = self._write_lock if write and self._write_lock is not None else nullcontext()
        try:
            with guard:
                # Reads too: SQLite touching files that turned read-only under it can die of SIGBUS.
                self._check_file()
                with self.engine.connect() as connection:
                    try:
                        if not write:
                            connection = connection.execution_options(caselink_read_only=True)
                        with connection.begin():
                            yield connection
                        if write:
                            # While the connection is at hand: one that wrote through files
                            # no longer at their path is closed below, not used again.
                            self._check_file(committed=True)
                    except DBAPIError as exc:
                        if is_unavailable(exc):
                            # A connection SQLite opened read-only stays read-only: never reuse it.
                            connection.invalidate()
                        raise
                    finally:
                        if not connection.invalidated and self._outdated(connection.info):
                            connection.invalidate()
        except DBAPIError as exc:
            if not is_unavailable(exc):
                raise
            raise self._unavailable(exc) from exc

    def _check_file(self, *, committed: bool = False) -> None:
        """Refuse to write (or to count as stored what was just committed) unless the
        SQLite files at the configured path (the database, its -wal and -shm) are the
        ones the connections have open and can be written; a new database file there
        is opened afresh, and new -wal and -shm files once no connection holds the old."""
        if self._file is None:
            return
        try:
            # After a commit, only where it went matters: the write is done, read-only or not.
            replaced = self._file.check(writable=not committed)
            stale = None if replaced else self._file.stale_companion()
        except StoreUnavailableError as exc:
            self._report(exc)
            raise
        if stale is not None:
            # The connections write through a -wal or -shm that a restart will not find: close
            # them all (the last copies what they committed into the database file), and open
            # none until this process holds none of the old files.
            self._let_go()
            error = self._file.stale_error(stale)
            self._report(error)
            raise error
        if not replaced:
            return
        # Every pooled connection points at the old file: close them all.
        self._let_go()
        error = StoreUnavailableError(
            "the database file was replaced while caselink ran; try again",
            operator=f"{describe_url(self.url)}: the file was replaced while caselink ran; "
            "its connections are opened again on the new file",
        )
        self._report(error)
        if committed:
            # The commit went to the file that was replaced, not to the one now at the path.
            raise error

    def _let_go(self) -> None:
        """Close the connections not in use; those in use are closed when their transaction ends."""
        if self._file is not None:
            self._file.let_go()
        with self._ingest_lock:
            idle, self._ingest_connection = self._ingest_connection, None
        if idle is not None:
            with contextlib.suppress(Exception):
                idle.invalidate()
        self.engine.dispose()
        self._writable_until = 0.0

    def _outdated(self, info: dict[str, Any]) -> bool:
        """Whether a connection was opened before this process let go of the files it had open."""
        return self._file is not None and self._file.outdated(info)

    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        """The error for a database that cannot be used: a sender's message without host,
        port, database name or path; the operator's with the (password-masked) DATABASE_URL."""
        error = StoreUnavailableError(
            f"the database is unavailable: {_public_reason(exc, self.dialect)}",
            operator=f"{describe_url(self.url)}: {_reason(exc)}",
        )
        self._report(error)
        return error

    def _report(self, error: StoreUnavailableError) -> None:
        """Log why the store is unavailable, each distinct reason at most every 10 s."""
        now = time.monotonic()
        if not self.report_unavailable or now < self._reported.get(error.operator, 0.0):
            return
        if len(self._reported) > 100:
            self._reported.clear()
        self._reported[error.operator] = now + 10.0
        log.error("store unavailable", extra={"fields": {"error": error.operator}})

    def check_writable(self) -> None:
        """Raise StoreUnavailableError unless a write can commit now.

        Commits a one-row heartbeat (at most once a second per process, so
        /readyz stays cheap): a read, or a write rolled back, would pass on a
        full disk or a database that turned read-only.
        """
        if time.monotonic() < self._writable_until:
            return
        if self._file is not None:
            self._file.check_space()
        self.set_state(HEARTBEAT_STATE, str(os.getpid()))
        self._writable_until = time.monotonic() + 1.0

    def dispose(self) -> None:
        with self._ingest_lock:
            idle, self._ingest_connection = self._ingest_connection, None
        if idle is not None:
            idle.close()
        self.engine.dispose()
        if self._write_lock is not None:
            self._write_lock.close()
        self._wake.close()

    def check_exists(self) -> None:
        """Raise SchemaError when DATABASE_URL names a SQLite file that is not there: nothing but
        `db upgrade` creates one, so that a command pointed at the wrong path leaves none behind."""
        if self._file is not None and self._file.missing():
            raise SchemaError(
                "the database has no caselink schema; run `bin/caselink db upgrade` to create it "
                "(no file is at the path DATABASE_URL names)"
            )

    def check_schema(self) -> None:
        """Raise SchemaError unless the database is at this release's migration head."""
        from caselink import migrations

        self.check_exists()
        self._check_file()
        try:
            current = migrations.current_revision(self.engine)
        except DBAPIError as exc:
            if not is_unavailable(exc):
                raise
            raise self._unavailable(exc) from None
        head = migrations.head_revision()
        if current == head:
            return
        if current is None:
            raise SchemaError("the database has no caselink schema; run `bin/caselink db upgrade`")
        if current in migrations.known_revisions():
            raise SchemaError(
                f"the database schema is at revision {current}, this release needs {head}; "
                "run `bin/caselink db upgrade`"
            )
        raise SchemaError(
            f"the database schema is at revision {current}, which this release does not know "
            f"(it knows up to {head}); was it upgraded by a newer release?"
        )

    @contextmanager
    def _raw_transaction(self, *, ingest: bool = False, begin: bool = True) -> Iterator[Any]:
        """A write transaction on a DBAPI connection, for the compiled statements (see `Statement`).

        Ingest batches run one at a time (see _GroupCommit), so they keep one
        connection for themselves instead of taking one from the pool each time.
        On SQLite, `begin=False` is for a single statement, which is then its own
        transaction.
        """
        dbapi = self.engine.dialect.loaded_dbapi
        guard = self._write_lock if self._write_lock is not None else nullcontext()
        connection = None
        if ingest:
            # Taken while in use, so that letting go of the files (another thread) leaves it be.
            with self._ingest_lock:
                connection, self._ingest_connection = self._ingest_connection, None
        try:
            with guard:
                try:
                    self._check_file()
                    if connection is None or self._outdated(connection.info):
                        if connection is not None:
                            connection.invalidate()
                        connection = self.engine.raw_connection()
                    cursor = connection.cursor()
                    if self.dialect == "sqlite" and begin:
                        cursor.execute("BEGIN IMMEDIATE")
                    try:
                        yield cursor
                    except BaseException:
                        connection.rollback()
                        raise
                    connection.commit()
                    self._check_file(committed=True)
                finally:
                    # Still under the write lock: what an outdated connection committed is copied
                    # into the database file as it closes, before another writer goes on.
                    if connection is not None and self._outdated(connection.info):
                        connection.invalidate()
                        connection = None
        except (dbapi.Error, DBAPIError) as exc:
            if connection is not None:
                # Whatever state it is in, a connection that failed is not used again.
                connection.invalidate()
                connection = None
            if is_unavailable(exc):
                raise self._unavailable(exc) from exc
            raise
        finally:
            if ingest and connection is not None and connection.is_valid:
                # Kept unless it failed, or was invalidated because the files changed.
                with self._ingest_lock:
                    self._ingest_connection = connection
            elif connection is not None:
                connection.close()

    # -- shared service state ---------------------------------------------

    def set_state(self, name: str, value: str | None, now: float | None = None) -> None:
        now = time.time() if now is None else now
        statement = self._insert(service_state).values(name=name, value=value, updated_at=now)
        statement = statement.on_conflict_do_update(index_elements=["name"], set_={"value": value, "updated_at": now})
        with self.transaction() as connection:
            connection.execute(statement)

    def get_state(self, name: str) -> str | None:
        with self.transaction(write=False) as connection:
            return connection.execute(sa.select(service_state.c.value).where(service_state.c.name == name)).scalar()

    def describe(self) -> str:
        """The database this store reads, as a URL without its password or the driver caselink
        picked (postgresql://, as DATABASE_URL is written, not postgresql+psycopg://)."""
        parsed = sa.engine.make_url(self.url)
        return masked_url(parsed.set(drivername=parsed.get_backend_name()).render_as_string(hide_password=True))


# The largest id an id column holds on either store (BIGINT on PostgreSQL, INTEGER on SQLite).
LARGEST_ID = 2**63 - 1


def storable_id(value: int) -> bool:
    """Whether `value` is an id the database can hold (1 ..= LARGEST_ID): a larger one is no
    row, not an OverflowError or "bigint out of range"."""
    return 1 <= value <= LARGEST_ID


class Statement:
    """SQL compiled once for this database, run on the DBAPI cursor.

    The webhook path runs these few statements straight on the pooled DBAPI
    connection: at webhook rates SQLAlchemy's per-execution work (compiling,
    caching, result wrapping) costs several times what the database does.
    """

    def __init__(self, sql: str, dialect: sa.engine.Dialect) -> None:
        compiled = sa.text(sql).compile(dialect=dialect)
        self.sql = compiled.string
        order = compiled.positiontup
        # Positional drivers (sqlite3) take a tuple in the compiled order; named ones (psycopg) the dict.
        self._pick = itemgetter(*order) if order and len(order) > 1 else None
        self._single = order[0] if order and len(order) == 1 else None
        self.positional = order is not None

    def params(self, values: dict[str, Any]) -> Any:
        if self._pick is not None:
            return self._pick(values)
        if self._single is not None:
            return (values[self._single],)
        return values


class RowsStatement(Statement):
    """A statement with the same names bound for each of several rows (`:name_0`, `:name_1`, …).

    `binds` are (name, column) pairs in the order the statement binds them in a
    row; a column may be bound under two names (PostgreSQL types each name once).
    """

    def __init__(self, sql: str, dialect: sa.engine.Dialect, binds: tuple[tuple[str, str], ...]) -> None:
        super().__init__(sql, dialect)
        self._binds = binds
        self._row = itemgetter(*(column for _, column in binds))

    def params_of_rows(self, rows: list[dict[str, Any]]) -> Any:
        if self.positional:
            # Positional drivers (sqlite3) bind the rows' columns in order, row after row.
            return [value for row in rows for value in self._row(row)]
        return {f"{name}_{index}": row[column] for index, row in enumerate(rows) for name, column in self._binds}


def is_transient(exc: BaseException | None) -> bool:
    """A deadlock or serialization failure: the same transaction may succeed if run again."""
    code = getattr(getattr(exc, "orig", exc), "sqlstate", None)
    return code in ("40P01", "40001")


def first_line(exc: BaseException) -> str:
    """The first line of an error about a value (never about the connection), for the sender."""
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _reason(exc: BaseException) -> str:
    """The driver's own words, first line: for the operator (it may name host, port and database)."""
    original = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    return "; ".join(lines[:2])[:300] if lines else type(original).__name__


# SQLSTATE classes and codes of PostgreSQL errors that say the database cannot be used now,
# and what a sender may be told of them.
_PG_UNAVAILABLE = {
    "08": "cannot connect to the database",
    "3D": "the database does not exist",
    "28": "the database refused caselink's credentials",
    "53": "the database server is out of resources (disk, memory or connections)",
    "57": "the database server is shutting down or starting",
    "58": "the database server had an I/O error",
    "25006": "the database is read-only",
}
# SQLite errors that mean the file cannot be used now, whatever the statement.
_SQLITE_UNAVAILABLE = ("SQLITE_READONLY", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_NOTADB",
                       "SQLITE_CORRUPT", "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_PERM")  # fmt: skip


def is_unavailable(exc: BaseException) -> bool:
    """Whether a database error says the database cannot be used now (not that the statement was wrong)."""
    original = getattr(exc, "orig", None) or exc
    if isinstance(exc, OperationalError) or type(original).__name__ == "OperationalError":
        return True
    state = getattr(original, "sqlstate", None)
    if isinstance(state, str):
        return state in _PG_UNAVAILABLE or state[:2] in _PG_UNAVAILABLE
    name = getattr(original, "sqlite_errorname", None)
    return isinstance(name, str) and name.startswith(_SQLITE_UNAVAILABLE)


def _public_reason(exc: BaseException, dialect: str) -> str:
    """Why the database cannot be used, in words that name no host, port, database or path."""
    original = getattr(exc, "orig", None) or exc
    if dialect == "sqlite":
        # SQLite's messages name no file: "attempt to write a readonly database", "database or disk is full".
        return str(original).splitlines()[0][:200] if str(original) else type(original).__name__
    state = getattr(original, "sqlstate", None)
    if isinstance(state, str):
        return _PG_UNAVAILABLE.get(state) or _PG_UNAVAILABLE.get(state[:2]) or "the database answered with an error"
    return "cannot connect to the database"


def describe_url(url: str) -> str:
    """`DATABASE_URL (postgresql://user:***@host:5432/name)`: which database, never the password."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return "DATABASE_URL (not a URL)"
    shown = parsed.set(drivername=parsed.get_backend_name()).render_as_string(hide_password=True)
    return f"DATABASE_URL ({masked_url(shown)})"


def database_error(url: str, exc: BaseException) -> StoreUnavailableError | None:
    """StoreUnavailableError for a database error raised outside a Store (migrations), or None
    when the error is not about reaching or writing the database."""
    if not isinstance(exc, DBAPIError | sqlite3.Error) or not is_unavailable(exc):
        return None
    dialect = "postgresql" if url.startswith("postgresql") else "sqlite"
    return StoreUnavailableError(
        f"the database is unavailable: {_public_reason(exc, dialect)}", operator=f"{describe_url(url)}: {_reason(exc)}"
    )
