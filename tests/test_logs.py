"""Log lines on stdout: one per record, JSON or key=value, written the same way on the fast path."""

from __future__ import annotations

import json
import logging
import threading

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


class _Stream:
    """A stdout that records each write and which thread made it; `hold` blocks the first write."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.writes: list[tuple[int, str]] = []
        self.hold = hold
        self.writing = threading.Event()

    def write(self, text: str) -> int:
        self.writing.set()
        if self.hold is not None:
            hold, self.hold = self.hold, None
            hold.wait(5)
        self.writes.append((threading.get_ident(), text))
        return len(text)

    def flush(self) -> None:
        pass

    def lines(self) -> list[str]:
        return "".join(text for _, text in self.writes).splitlines()


def test_lines_logged_by_many_threads_at_once_are_each_written_whole_and_once(configured, monkeypatch):
    configured()
    logs.configure("INFO", "json")
    stream = _Stream()
    monkeypatch.setattr("sys.stdout", stream)

    def log_many(thread: int) -> None:
        for n in range(300):
            logs.emit(logs.get("web"), logging.INFO, "webhook", {"thread": thread, "n": n})

    threads = [threading.Thread(target=log_many, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    written = [json.loads(line) for line in stream.lines()]
    assert sorted((entry["thread"], entry["n"]) for entry in written) == [(t, n) for t in range(8) for n in range(300)]
    for t in range(8):  # each thread's lines in the order it logged them
        assert [entry["n"] for entry in written if entry["thread"] == t] == list(range(300))


def test_a_line_logged_during_another_threads_write_is_written_by_that_thread_right_after(configured, monkeypatch):
    configured()
    logs.configure("INFO", "json")
    release = threading.Event()
    stream = _Stream(hold=release)
    monkeypatch.setattr("sys.stdout", stream)
    first = threading.Thread(target=logs.emit, args=(logs.get("web"), logging.INFO, "first", {}))
    first.start()
    assert stream.writing.wait(5)

    logs.get("web").warning("second")  # through logging: the same queue, the same order
    logs.emit(logs.get("web"), logging.INFO, "third", {})
    assert stream.writes == []  # nobody waited for the write under way
    release.set()
    first.join(5)

    assert [json.loads(line)["msg"] for line in stream.lines()] == ["first", "second", "third"]
    assert {ident for ident, _ in stream.writes} == {first.ident}
    assert len(stream.writes) == 2


def test_a_failed_write_is_reported_and_the_next_line_is_written(configured, monkeypatch, capsys):
    configured()
    logs.configure("INFO", "json")

    class Broken(_Stream):
        def write(self, text: str) -> int:
            raise OSError("stdout is closed")

    monkeypatch.setattr("sys.stdout", Broken())
    monkeypatch.setattr(logging, "raiseExceptions", False)
    logs.emit(logs.get("web"), logging.INFO, "lost", {})
    stream = _Stream()
    monkeypatch.setattr("sys.stdout", stream)
    logs.emit(logs.get("web"), logging.INFO, "written", {})

    assert [json.loads(line)["msg"] for line in stream.lines()] == ["written"]


def test_a_forked_child_writes_even_if_the_parent_was_writing_when_it_forked(configured, monkeypatch):
    configured()
    logs.configure("INFO", "json")
    stream = _Stream()
    monkeypatch.setattr("sys.stdout", stream)
    monkeypatch.setattr(logs._STDOUT, "_writing", True)  # noqa: SLF001 - a write under way in another thread

    logs._STDOUT._forget_writer()  # noqa: SLF001 - what os.fork runs in the child
    logs.emit(logs.get("web"), logging.INFO, "child", {})

    assert [json.loads(line)["msg"] for line in stream.lines()] == ["child"]
