"""SQLite's machinery: the file caselink opens and watches, the lock file that queues writers,
and the datagram socket that wakes idle workers (SQLite has no LISTEN/NOTIFY).

Nothing here knows the schema; `engine.Database` uses it when DATABASE_URL is a SQLite URL.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import sqlite3
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

from caselink.errors import StoreUnavailableError


def sqlite_engine(url: str, *, pool_size: int) -> tuple[Engine, DatabaseFile | None]:
    """An engine for a SQLite URL, and the file it opens (None for an in-memory or `file:` URI database)."""
    path = prepare_sqlite_path(url)
    file = None
    if path is not None:
        # Connections open the file as it is and never create it: a file deleted
        # while caselink runs must not come back empty under the next connection.
        file = DatabaseFile(path)
        uri = f"file:{quote(path)}?mode=rw"
        engine = sa.create_engine(
            url,
            creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False),
            poolclass=QueuePool,
            pool_size=pool_size,
            max_overflow=10,
        )
    else:
        engine = sa.create_engine(url, pool_size=pool_size, max_overflow=10)
    configure_sqlite(engine)
    return engine, file


def prepare_sqlite_path(url: str) -> str | None:
    """Make the folder and the (empty) database file of a SQLite URL; return the file's path,
    None for an in-memory or `file:` URI database."""
    database = sa.engine.make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = os.path.abspath(database)
    with contextlib.suppress(OSError):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Only here is the file created: connections open it with mode=rw.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
    return path


# Below this much free space beside a SQLite file, readiness fails: a write that fits in
# the WAL's old frames still commits, a webhook that needs new ones does not.
MIN_FREE_BYTES = 1024 * 1024


class DatabaseFile:
    """The SQLite file at the configured path, as the connections have it open.

    A file deleted or replaced under a running process keeps its open
    connections writing to the old inode, so commits succeed and vanish at
    the next restart. Two stat(2)s before each write transaction and after
    its commit notice that, and that the files cannot be written.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._companions = (f"{path}-wal", f"{path}-shm")
        self._identity: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def check_space(self) -> None:
        """StoreUnavailableError when the disk holding the file is (nearly) full."""
        try:
            found = os.statvfs(os.path.dirname(self.path))
        except OSError:
            return
        if found.f_bavail * found.f_frsize < MIN_FREE_BYTES:
            raise StoreUnavailableError(
                "the disk holding the database is full",
                operator=f"DATABASE_URL (sqlite:///{self.path}): under {MIN_FREE_BYTES // 1024} KiB free on its disk",
            )

    def check(self) -> bool:
        """True when another file now stands at the path (from then on it is the one);
        StoreUnavailableError when none does or it cannot be written."""
        try:
            found = os.stat(self.path)
        except OSError as exc:
            raise StoreUnavailableError(
                "the database file is gone",
                operator=f"DATABASE_URL (sqlite:///{self.path}): the file was deleted or moved while caselink ran "
                f"({exc.strerror}); restore it, or run `bin/caselink db upgrade` to start an empty one",
            ) from None
        for path in (self.path, *self._companions):
            # Writing through files that turned read-only can kill the process (SIGBUS on SQLite's
            # shared-memory file); refusing first costs an access(2) each.
            if not os.access(path, os.W_OK) and os.path.exists(path):
                raise StoreUnavailableError(
                    "the database is read-only",
                    operator=f"DATABASE_URL (sqlite:///{self.path}): {os.path.basename(path)} cannot be written",
                )
        identity = (found.st_dev, found.st_ino)
        with self._lock:
            if self._identity is None:
                self._identity = identity
                return False
            if identity == self._identity:
                return False
            self._identity = identity
            return True


def configure_sqlite(engine: Engine) -> None:
    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's BEGIN below decide transactions, not the sqlite3 module.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives the process being killed; only an
        # OS crash or power cut can lose the last transactions.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        # No memory map of the database (mmap_size stays 0): it made reading pages
        # back after another process's commit cheaper, but a file that is truncated,
        # replaced or turns unwritable under a map kills the process with SIGBUS.
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa_event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # A writer takes the write lock up front, so two writers queue instead of
        # failing when a read lock cannot be upgraded; readers never block in WAL.
        read_only = connection.get_execution_options().get("caselink_read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


class Wakeup:
    """Wakes an idle SQLite worker on this machine when a commit makes links due.

    SQLite has no LISTEN/NOTIFY, and the delivery worker usually lives in
    another gunicorn process than the one that took the webhook. The worker
    binds a datagram socket named after the database; every commit that plans
    links sends it one byte. Without a listener the byte goes nowhere and the
    worker's poll finds the links instead.
    """

    def __init__(self, url: str | None) -> None:
        database = sa.engine.make_url(url).database if url else None
        self.path: str | None = None
        if database and database != ":memory:":
            # Unix socket paths are short (108 bytes); the database path may not be.
            digest = hashlib.sha256(os.path.abspath(database).encode()).hexdigest()[:16]
            self.path = os.path.join(tempfile.gettempdir(), f"caselink-{digest}.wake")
        self._sender: socket.socket | None = None

    def send(self) -> None:
        if self.path is None:
            return
        try:
            if self._sender is None:
                self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sender.setblocking(False)
            self._sender.sendto(b"!", self.path)
        except OSError:
            pass  # no worker listening, or its queue is full: it is awake or will poll

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None

    def listen(self, on_notify: Callable[[], None], stop: threading.Event) -> None:
        if self.path is None:
            return
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bound = self._bind(listener)
        try:
            listener.settimeout(1.0)
            while bound and not stop.is_set():
                try:
                    listener.recv(64)
                except TimeoutError:
                    continue
                except OSError:
                    return
                on_notify()
        finally:
            listener.close()
            if bound:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)

    def _bind(self, listener: socket.socket) -> bool:
        """Bind the socket unless another live worker holds it (then that one is woken instead)."""
        assert self.path is not None
        try:
            listener.bind(self.path)
        except OSError:
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                probe.connect(self.path)
                return False
            except OSError:
                # Left behind by a process that died: take it over.
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                try:
                    listener.bind(self.path)
                except OSError:
                    return False
            finally:
                probe.close()
        return True


class WriteLock:
    """One SQLite writer at a time across this machine's caselink processes, queued by the kernel."""

    def __init__(self, url: str) -> None:
        database = sa.engine.make_url(url).database
        self._path = f"{database}.lock" if database and database != ":memory:" else None
        self._threads = threading.Lock()
        self._file: Any = None

    def __enter__(self) -> None:
        self._threads.acquire()
        if self._path is None:
            return
        try:
            if self._file is None:
                self._file = open(self._path, "a")  # noqa: SIM115 - kept open for the life of the process
            fcntl.flock(self._file, fcntl.LOCK_EX)
        except OSError:
            # No lock file (a read-only directory, say): SQLite's own busy wait still serialises writers.
            pass

    def __exit__(self, *_exc: object) -> None:
        try:
            if self._file is not None:
                fcntl.flock(self._file, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def close(self) -> None:
        with self._threads:
            if self._file is not None:
                self._file.close()
                self._file = None
