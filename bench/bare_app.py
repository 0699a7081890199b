"""The baselines for bench/ack_throughput.py: a bare Flask endpoint that answers 202.

It reads the body and answers a JSON summary of the same shape as caselink's,
so the difference between the two is caselink's own work (authentication,
parsing, rules, the store transaction, logging, metrics), not HTTP or Flask.
It imports nothing from caselink and runs none of its gunicorn hooks.

With BARE_DATABASE set to a SQLite file (the `stored` target), it also stores
each body before answering, as any service must whose 202 means stored: it
inserts the body into that file and commits, as caselink's SQLite store does
(WAL, synchronous=NORMAL, one writer at a time across the processes through a
lock file), with the requests that arrive together sharing a transaction (a
simple group commit). It parses nothing, evaluates no rule and logs nothing. It
is a reference, not a bound: caselink as of 7197a0d, which does all of that,
answered slightly faster (its group commit is better tuned).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from typing import Any

from flask import Flask
from flask import jsonify
from flask import request

app = Flask(__name__)


class _DurableWrite:
    """Each request's row committed to a SQLite file before it returns, in group commits: the
    requests that arrive while one thread writes are written together by the next, in one
    transaction, as caselink's store does; one writer at a time across the processes."""

    def __init__(self, path: str) -> None:
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.execute("PRAGMA busy_timeout=10000")
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, source TEXT, payload BLOB, received_at REAL)"
        )
        self._file = open(f"{path}.lock", "a")  # noqa: SIM115 - kept open for the life of the process
        self._changed = threading.Condition()
        self._queue: list[list[Any]] = []
        self._writing = False

    def __call__(self, source: str, body: bytes) -> int:
        row: list[Any] = [source, body, time.time(), None]  # the last: the row's id, or what failed it
        with self._changed:
            self._queue.append(row)
            while self._writing and row[3] is None:
                self._changed.wait()
            if row[3] is not None:
                return self._outcome(row)
            self._writing = True
            batch, self._queue = self._queue, []
        ids: list[Any] = []
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX)
            try:
                cursor = self._connection.cursor()
                cursor.execute("BEGIN IMMEDIATE")
                for taken in batch:
                    cursor.execute("INSERT INTO events (source, payload, received_at) VALUES (?, ?, ?)", taken[:3])
                    ids.append(int(cursor.lastrowid or 0))
                cursor.execute("COMMIT")
            finally:
                fcntl.flock(self._file, fcntl.LOCK_UN)
        except Exception as exc:
            if self._connection.in_transaction:
                self._connection.execute("ROLLBACK")
            ids = [exc] * len(batch)
        finally:
            with self._changed:
                for taken, outcome in zip(batch, ids, strict=True):
                    taken[3] = outcome
                self._writing = False
                self._changed.notify_all()
        return self._outcome(row)

    @staticmethod
    def _outcome(row: list[Any]) -> int:
        if isinstance(row[3], Exception):
            raise row[3]
        return int(row[3])


_durable = _DurableWrite(os.environ["BARE_DATABASE"]) if os.environ.get("BARE_DATABASE") else None


@app.post("/webhooks/<source>")
def receive(source: str) -> tuple[Any, int]:
    body = request.get_data(cache=False)
    event_id = _durable(source, body) if _durable is not None else 0
    summary = {"events": [{"id": event_id, "kind": source, "duplicate": False, "links_planned": 0}], "links_planned": 0}
    summary["bytes"] = len(body)
    return jsonify(summary), 202


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
