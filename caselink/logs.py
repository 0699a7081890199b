"""Logging to stdout: one JSON object (or one key=value line) per record.

Call sites pass structured fields with `extra={"fields": {...}}`; the
formatter never prints anything it was not given, so secrets stay out unless
a caller puts them in, and no caller does.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from caselink import jsontext

_configured = False


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}) or {})
        if record.exc_info and record.levelno >= logging.ERROR:
            entry["exception"] = self.formatException(record.exc_info)
        return jsontext.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record.created), record.levelname.lower(), record.getMessage()]
        for name, value in (getattr(record, "fields", {}) or {}).items():
            shown = value if isinstance(value, (int, float)) else json.dumps(value, default=str)
            parts.append(f"{name}={shown}")
        line = " ".join(str(part) for part in parts)
        if record.exc_info and record.levelno >= logging.ERROR:
            line += "\n" + self.formatException(record.exc_info)
        return line


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
    # The formatters print none of these, and collecting them costs more than
    # formatting a line (the logging HOWTO's "Optimization" section).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # noqa: SLF001 - no caller lookup through stack frames
    _configured = True


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stdout is now, so test capture and reopened streams work."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
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
