"""Log lines on stdout: one per record, JSON or key=value, written the same way on the fast path."""

from __future__ import annotations

import json
import logging

import pytest

from caselink import logs

FIELDS = {"source": "datadog", "status": 202, "links_planned": 1, "reason": 'quoted "text"'}


@pytest.fixture
def configured(monkeypatch):
    """caselink's logging as in production; `alone()` takes pytest's capture handlers off the root logger."""
    logger = logging.getLogger("caselink")
    level = logger.level
    yield lambda: monkeypatch.setattr(logging.getLogger(), "handlers", [])
    logs.configure(logging.getLevelName(level) if level else "INFO", "json")


def _without_timestamp(line: str, fmt: str) -> str:
    if fmt == "json":
        entry = json.loads(line)
        entry.pop("ts")
        return json.dumps(entry)
    return line.split(" ", 1)[1]


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_emit_writes_the_line_that_logging_writes(configured, capsys, fmt):
    configured()
    logs.configure("INFO", fmt)
    logger = logs.get("web")
    assert logs._sole_stdout_handler(logger, logging.INFO) is not None  # noqa: SLF001 - the fast path is taken

    logger.log(logging.INFO, "webhook", extra={"fields": FIELDS})
    logs.emit(logger, logging.INFO, "webhook", FIELDS)

    by_logging, by_emit = capsys.readouterr().out.splitlines()
    assert _without_timestamp(by_emit, fmt) == _without_timestamp(by_logging, fmt)


def test_emit_respects_the_level(configured, capsys):
    configured()
    logs.configure("WARNING", "json")

    logs.emit(logs.get("web"), logging.INFO, "webhook", FIELDS)
    logs.emit(logs.get("web"), logging.WARNING, "webhook", FIELDS)

    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["level"] == "warning"


def test_emit_reaches_every_other_handler_too(configured, capsys):
    configured()
    logs.configure("INFO", "json")
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logging.getLogger().addHandler(Keep())
    logs.emit(logs.get("web"), logging.INFO, "webhook", FIELDS)

    assert [record.fields for record in seen] == [FIELDS]  # type: ignore[attr-defined]
    assert json.loads(capsys.readouterr().out)["source"] == "datadog"
