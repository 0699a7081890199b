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
    path = sqlite_path(url)
    file = None
    if path is not None:
        # Connections open the file as it is and never create it: a file deleted
        # while caselink runs must not come back empty under the next connection,
        # and a command that reads must not leave an empty database behind.
        file = DatabaseFile(path)
        uri = f"file:{quote(path)}?mode=rw"
        opened = file

        def connect() -> sqlite3.Connection:
            # A connection opened while this process still holds a deleted -wal or -shm would
            # share the old -shm's index with a new -wal: wrong pages, read and checkpointed.
            opened.refuse_if_stale()
            return sqlite3.connect(uri, uri=True, check_same_thread=False)

        engine = sa.create_engine(
            url,
            creator=connect,
            poolclass=QueuePool,
            pool_size=pool_size,
            max_overflow=10,
        )
    else:
        engine = sa.create_engine(url, pool_size=pool_size, max_overflow=10)
    configure_sqlite(engine, file)
    return engine, file


def sqlite_path(url: str | sa.URL) -> str | None:
    """The database file of a SQLite URL, None for an in-memory or `file:` URI database."""
    database = sa.engine.make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return os.path.abspath(database)


def create_sqlite_file(url: str | sa.URL) -> None:
    """Make the folder and the (empty) database file of a SQLite URL, unless they are there:
    only bringing the schema up to date (`db upgrade`) creates a database."""
    path = sqlite_path(url)
    if path is None:
        return
    with contextlib.suppress(OSError):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))


# Below this much free space beside a SQLite file, readiness fails: a write that fits in
# the WAL's old frames still commits, a webhook that needs new ones does not.
MIN_FREE_BYTES = 1024 * 1024


# Where Linux shows the files a process has open (elsewhere, identities kept at open stand in).
_OPEN_FILES = "/proc/self/fd"


class DatabaseFile:
    """The SQLite files at the configured path, as the connections have them open: the
    database, and the -wal and -shm files beside it that SQLite relies on.

    A file deleted or replaced under a running process keeps its open
    connections writing to the old inode, so commits succeed and vanish at
    the next restart. Two stat(2)s before each write transaction and after
    its commit notice that, and that the files cannot be written. Two more
    compare the -wal and -shm at their paths with those this process has
    open (as /proc/self/fd showed them when a connection last opened), and
    notice one that was deleted or replaced.

    Connections opened before the process let go of such files are outdated
    (`generation`): each is closed instead of being used again.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._companions = (f"{path}-wal", f"{path}-shm")
        # /proc shows the files as the kernel resolved their path.
        real = os.path.realpath(path)
        self._real_companions = {f"{real}-wal": self._companions[0], f"{real}-shm": self._companions[1]}
        self._identity: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self.generation = 0
        # (descriptor, path, identity) of each -wal and -shm this process had open when last looked.
        self._held: list[tuple[int, str, tuple[int, int]]] = []
        # The distinct (path, identity) pairs of those: what the paths must still hold.
        self._expected: tuple[tuple[str, tuple[int, int]], ...] = ()
        self._look = True
        # Without /proc: the identity of each -wal and -shm when a connection first opened it.
        self._kept: dict[str, tuple[int, int]] = {}

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

    def check(self, *, writable: bool = True) -> bool:
        """True when another file now stands at the path (from then on it is the one);
        StoreUnavailableError when none does or (`writable`) it cannot be written."""
        try:
            found = os.stat(self.path)
        except OSError as exc:
            if self.missing():
                raise StoreUnavailableError(
                    "there is no database",
                    operator=f"DATABASE_URL (sqlite:///{self.path}): no database file is there; "
                    "run `bin/caselink db upgrade` to create it",
                ) from None
            raise StoreUnavailableError(
                "the database file is gone",
                operator=f"DATABASE_URL (sqlite:///{self.path}): the file was deleted or moved while caselink ran "
                f"({exc.strerror}); restore it, or run `bin/caselink db upgrade` to start an empty one",
            ) from None
        for path in (self.path, *self._companions) if writable else ():
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

    def missing(self) -> bool:
        """Whether no file has been at the path since this process started: nothing created it yet."""
        return self._identity is None and not os.path.exists(self.path)

    def stale_companion(self) -> str | None:
        """The name of a -wal or -shm file this process has open that is no longer the file at
        its path (deleted, or replaced), or None: a commit through it is lost at the next start."""
        if self._look:
            with self._lock:
                self._remember(self._open_companions())
        # Every connection has the same -wal and -shm open (unless they went): a stat(2) each.
        for path, identity in self._expected:
            if _identity(path) != identity:
                break
        else:
            # What was open when last looked: a descriptor closed since changes nothing here.
            return None
        # The old files may all have been closed since: look again before saying so.
        with self._lock:
            self._remember(self._open_companions())
            for path, identity in self._expected:
                if _identity(path) != identity:
                    return os.path.basename(path)
        return None

    def _remember(self, held: list[tuple[int, str, tuple[int, int]]]) -> None:
        self._held, self._look = held, False
        self._expected = tuple(sorted({(path, identity) for _, path, identity in held}))

    def refuse_if_stale(self) -> None:
        """StoreUnavailableError while this process holds a -wal or -shm that is no longer at its path."""
        stale = self.stale_companion()
        if stale is not None:
            raise self.stale_error(stale)

    def stale_error(self, name: str) -> StoreUnavailableError:
        return StoreUnavailableError(
            "the database's files were deleted or replaced while caselink ran; try again",
            operator=f"DATABASE_URL (sqlite:///{self.path}): {name} was deleted or replaced while caselink ran; "
            "what was committed through it is not counted as stored, and connections open again once "
            "this process holds none of the old files",
        )

    def opened(self, info: dict[str, Any]) -> None:
        """A connection opened the files (its first statement ran): it belongs to this generation."""
        info["caselink_generation"] = self.generation
        with self._lock:
            self._look = True
            if not os.path.isdir(_OPEN_FILES):
                for path in self._companions:
                    identity = _identity(path)
                    if identity is not None:
                        self._kept.setdefault(path, identity)

    def outdated(self, info: dict[str, Any]) -> bool:
        """Whether a connection was opened before the process let go of the files it had open."""
        generation: int = info.get("caselink_generation", self.generation)
        return generation < self.generation

    def let_go(self) -> None:
        """Count every connection opened so far as outdated: each is closed instead of used again."""
        with self._lock:
            self.generation += 1
            self._kept.clear()
            self._look = True

    def _open_companions(self) -> list[tuple[int, str, tuple[int, int]]]:
        """Each -wal and -shm this process has open, as (descriptor, path, identity); the lock is held.

        /proc names a file by where it is now: one renamed away is found by its descriptor,
        still open on the same file, among those seen before."""
        if not os.path.isdir(_OPEN_FILES):
            return [(-1, path, identity) for path, identity in self._kept.items()]
        found: dict[int, tuple[str, tuple[int, int]]] = {}
        for name in os.listdir(_OPEN_FILES):
            try:
                fd = int(name)
                target = os.readlink(f"{_OPEN_FILES}/{name}").removesuffix(" (deleted)")
                path = self._real_companions.get(target)
                if path is None:
                    continue
                opened = os.fstat(fd)
            except (OSError, ValueError):
                continue
            found[fd] = (path, (opened.st_dev, opened.st_ino))
        for fd, path, identity in self._held:
            if fd in found:
                continue
            try:
                opened = os.fstat(fd)
            except OSError:
                continue
            if (opened.st_dev, opened.st_ino) == identity:
                found[fd] = (path, identity)
        return [(fd, path, identity) for fd, (path, identity) in found.items()]


def _identity(path: str) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def configure_sqlite(engine: Engine, file: DatabaseFile | None = None) -> None:
    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
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
        if file is not None:
            file.opened(record.info)

    @sa_event.listens_for(engine, "close")
    def _on_close(dbapi_connection: Any, record: Any) -> None:
        # An outdated connection may hold the only way to the frames committed to a -wal that
        # was deleted: copy them into the database file before closing it.
        if file is not None and file.outdated(record.info):
            with contextlib.suppress(sqlite3.Error):
                dbapi_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")

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
