"""Logging to stdout: one JSON object (or one key=value line) per record.

Call sites pass structured fields with `extra={"fields": {...}}`; the
formatter never prints anything it was not given, so secrets stay out unless
a caller puts them in, and no caller does.
"""

from __future__ import annotations

import abc
import atexit
import json
import logging
import logging.handlers
import os
import queue
import select
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

from caselink import jsontext

_configured = False


class _LineFormatter(logging.Formatter, abc.ABC):
    """Formats a record as one line; `emit` calls `line` directly, without a record."""

    def format(self, record: logging.LogRecord) -> str:
        exception = None
        if record.exc_info and record.levelno >= logging.ERROR:
            exception = self.formatException(record.exc_info)
        fields = getattr(record, "fields", None) or {}
        return self.line(record.created, record.levelname, record.name, record.getMessage(), fields, exception)

    @abc.abstractmethod
    def line(
        self, created: float, level: str, logger: str, msg: str, fields: dict[str, Any], exception: str | None = None
    ) -> str:
        """The line for one record: its time, level, logger, message, fields and traceback."""


class JsonFormatter(_LineFormatter):
    def line(
        self, created: float, level: str, logger: str, msg: str, fields: dict[str, Any], exception: str | None = None
    ) -> str:
        entry: dict[str, Any] = {"ts": _timestamp(created), "level": level.lower(), "logger": logger, "msg": msg}
        entry.update(fields)
        if exception is not None:
            entry["exception"] = exception
        return jsontext.dumps(entry, default=str)


class TextFormatter(_LineFormatter):
    def line(
        self, created: float, level: str, logger: str, msg: str, fields: dict[str, Any], exception: str | None = None
    ) -> str:
        parts = [_timestamp(created), level.lower(), msg]
        for name, value in fields.items():
            shown = value if isinstance(value, (int, float)) else json.dumps(value, default=str)
            parts.append(f"{name}={shown}")
        text = " ".join(str(part) for part in parts)
        return text if exception is None else text + "\n" + exception


def emit(logger: logging.Logger, level: int, msg: str, fields: dict[str, Any]) -> None:
    """Log as `logger.log(level, msg, extra={"fields": fields})` does, for lines logged on every request.

    When caselink's stdout handler is the only one the record would reach (as
    configured), the line is formatted here and handed to the output: building
    a LogRecord and passing it through the logging machinery cost more than
    the line.
    """
    if not logger.isEnabledFor(level):
        return
    handler = _sole_stdout_handler(logger, level)
    if handler is None:
        logger.log(level, msg, extra={"fields": fields})
        return
    # _sole_stdout_handler returns only a handler whose formatter is caselink's, which has line().
    line = handler.formatter.line(time.time(), logging.getLevelName(level), logger.name, msg, fields)  # type: ignore[union-attr]
    try:
        _OUTPUT.put(line)
    except Exception:  # noqa: BLE001 - logging again reports the failure the way logging does
        logger.log(level, msg, extra={"fields": fields})


def write_in_background() -> None:
    """From now on this process's lines are written by a thread of their own; call `flush` before it exits.

    gunicorn's workers call this (gunicorn.conf.py): a request thread then only
    queues its line, and never waits on stdout, which a log router reading
    through a pipe can stall. Lines keep the order they were logged in.
    """
    _OUTPUT.start()


def route_through_queue(logger: logging.Logger) -> None:
    """Send the lines of `logger`'s stream handlers (as they format them) through caselink's writer.

    gunicorn's workers call this for gunicorn's own error log, which request
    threads write to (an invalid request, a socket error): with it writing to
    stderr itself, a stalled log pipe would hold those threads. The lines go
    to stdout, in order with caselink's.
    """
    for handler in list(logger.handlers):
        if type(handler) is logging.StreamHandler:
            logger.removeHandler(handler)
            logger.addHandler(_FormattedBy(handler))


def flush() -> None:
    """Write every line logged so far, and write later ones at once; safe to call more than once."""
    _OUTPUT.stop()


def _sole_stdout_handler(logger: logging.Logger, level: int) -> _StdoutHandler | None:
    if logger.filters:
        return None
    found = None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if found is not None or type(handler) is not _StdoutHandler:
                return None
            found = handler
        current = current.parent if current.propagate else None
    if found is None or level < found.level or found.filters:
        return None
    return found if isinstance(found.formatter, _LineFormatter) else None


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """Send caselink's loggers to stdout; safe to call more than once."""
    global _configured
    logger = logging.getLogger("caselink")
    logger.setLevel(level)
    if _configured:
        for handler in logger.handlers:
            handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
        return
    handler = _StdoutHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.addHandler(handler)
    _configured = True


# What one write(2) to a pipe may hold and still reach the reader whole, never interleaved with
# another process's write to the same pipe (POSIX PIPE_BUF; 4096 on Linux). gunicorn's workers
# share their stdout: a larger write that a stalled reader leaves half done lets a sibling's
# lines in mid-line.
_ATOMIC_WRITE = select.PIPE_BUF


def _write(lines: list[str]) -> None:
    """Write `lines`, each ended by a newline, in writes of whole lines of at most PIPE_BUF bytes
    (one line longer than that alone in its write), each flushed."""
    stream = sys.stdout
    for chunk in _whole_lines(lines, _ATOMIC_WRITE):
        stream.write(chunk)
        stream.flush()


def _whole_lines(lines: list[str], limit: int) -> Iterator[str]:
    """`lines`, each ended by a newline, joined into runs of at most `limit` bytes of UTF-8 (a line
    longer than that alone in its run)."""
    chunk: list[str] = []
    size = 0
    for line in lines:
        length = len(line.encode("utf-8", "surrogatepass")) + 1
        if chunk and size + length > limit:
            yield "\n".join(chunk) + "\n"
            chunk, size = [], 0
        chunk.append(line)
        size += length
    if chunk:
        yield "\n".join(chunk) + "\n"


class _Listener(logging.handlers.QueueListener):
    """The standard QueueListener, with lines for records: it writes what has queued up in one write."""

    batch = 512
    # After each write the thread lets lines gather this long: woken for every line, it
    # would take the GIL from the request threads once per webhook.
    gather = 0.005

    def __init__(self, lines: queue.SimpleQueue[Any]) -> None:
        super().__init__(lines)
        self._pending: list[str] = []

    def handle(self, record: Any) -> None:
        self._pending.append(record)
        # QueueListener's `queue` is typed as the protocol of put/get; the listener is given a SimpleQueue.
        if len(self._pending) >= self.batch or self.queue.empty():  # type: ignore[attr-defined]
            self._write_pending()
            time.sleep(self.gather)

    def stop(self) -> None:
        super().stop()
        self._write_pending()  # what came just before the stop, which no empty queue flushed

    def _write_pending(self) -> None:
        lines, self._pending = self._pending, []
        if not lines:
            return
        try:
            _write(lines)
        except Exception:  # noqa: BLE001 - logging's own convention: report, never raise
            if logging.raiseExceptions:
                sys.stderr.write("--- Logging error ---\n")
                traceback.print_exc(file=sys.stderr)


class _Output:
    """Where caselink's lines go: written by the logging thread itself, or queued for a `_Listener`."""

    def __init__(self) -> None:
        self._forget_parent()
        os.register_at_fork(after_in_child=self._forget_parent)
        atexit.register(self.stop)

    def _forget_parent(self) -> None:
        # In a forked child the listener thread did not come along, and the lines still
        # queued are the parent's to write, not the child's as well.
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._listener: _Listener | None = None

    # Lines queued at most (about 40 MB of webhook lines). A log reader stalled for longer than
    # they take to queue then holds the threads that log, at its own pace: memory stays bounded,
    # and no line is dropped.
    limit = 100_000

    def put(self, line: str) -> None:
        while True:
            with self._lock:
                if self._listener is None:
                    _write([line])
                    return
                if self._queue.qsize() < self.limit:
                    self._queue.put(line)
                    return
            time.sleep(0.01)

    def start(self) -> None:
        with self._lock:
            if self._listener is None:
                self._listener = _Listener(self._queue)
                self._listener.start()

    def stop(self) -> None:
        # Under the lock, so that a line logged meanwhile is written after the queued ones.
        with self._lock:
            if self._listener is not None:
                listener, self._listener = self._listener, None
                listener.stop()


_OUTPUT = _Output()


class _StdoutHandler(logging.handlers.QueueHandler):
    """caselink's handler: each record becomes one formatted line for `_OUTPUT`, on whatever sys.stdout is now."""

    def __init__(self) -> None:
        super().__init__(None)  # type: ignore[arg-type]  # lines go to _OUTPUT, see enqueue

    def prepare(self, record: logging.LogRecord) -> str:
        return self.format(record)

    def enqueue(self, record: Any) -> None:
        _OUTPUT.put(record)


class _FormattedBy(_StdoutHandler):
    """Lines formatted by another handler (and at its level), queued for `_OUTPUT` instead of written by it."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self.setLevel(handler.level)
        self.setFormatter(handler.formatter)
        for kept in handler.filters:
            self.addFilter(kept)


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"caselink.{name}")


_second: list[Any] = [None, ""]


def _timestamp(created: float) -> str:
    # One strftime per second of log lines, not one per line.
    second = int(created)
    if _second[0] != second:
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_second[1]}.{int(created % 1 * 1000):03d}Z"
