"""Logging to stdout: one JSON object (or one key=value line) per record.

Call sites pass structured fields with `extra={"fields": {...}}`; the
formatter never prints anything it was not given, so secrets stay out unless
a caller puts them in, and no caller does.
"""

from __future__ import annotations

import abc
import json
import logging
import os
import sys
import threading
import time
from typing import Any
from typing import TextIO

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
    configured), the line is formatted and written here: building a LogRecord
    and passing it through the logging machinery cost more than the line.
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
        _STDOUT.write(line)
    except Exception:  # noqa: BLE001 - logging again reports the failure the way logging does
        logger.log(level, msg, extra={"fields": fields})


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


class _Lines:
    """Writes lines to stdout, and a line that comes while another thread is writing with it.

    Under load every webhook logs a line, and each write is a system call
    during which another thread takes the GIL. A thread that finds a write
    under way leaves its line to the writer, which writes every line that came
    meanwhile as soon as its own write returns: lines keep their order, and
    none waits for a timer or is kept back once its writer is done.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._writing = False
        os.register_at_fork(after_in_child=self._forget_writer)

    def write(self, line: str) -> None:
        with self._lock:
            self._pending.append(line)
            if self._writing:
                return
            self._writing = True
        try:
            while True:
                with self._lock:
                    lines, self._pending = self._pending, []
                    if not lines:
                        self._writing = False
                        return
                stream = sys.stdout
                stream.write("\n".join(lines) + "\n")
                stream.flush()
        except BaseException:
            with self._lock:
                self._writing = False
            raise

    def _forget_writer(self) -> None:
        # The writing thread, if there was one, did not come along into the child; the
        # lines it was to write are the parent's to write, not the child's as well.
        self._lock = threading.Lock()
        self._pending = []
        self._writing = False


_STDOUT = _Lines()


class _StdoutHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever sys.stdout is now, so test capture and reopened streams work."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _STDOUT.write(self.format(record))
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own convention: report, never raise
            self.handleError(record)

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"caselink.{name}")


_second: list[Any] = [None, ""]


def _timestamp(created: float) -> str:
    # One strftime per second of log lines, not one per line.
    second = int(created)
    if _second[0] != second:
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_second[1]}.{int(created % 1 * 1000):03d}Z"
