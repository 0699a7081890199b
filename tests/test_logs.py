"""Log lines on stdout: one per record, JSON or key=value, the same on the fast path; at once or from a thread."""

from __future__ import annotations

import json
import logging
import select
import threading
import time

import pytest

from caselink import logs
from tests.conftest import fixture_bytes

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


@pytest.fixture
def background():
    """Lines written by their own thread, as in a gunicorn worker; flushed at the end whatever happens."""
    logs.write_in_background()
    yield
    logs.flush()


def test_in_the_background_lines_from_many_threads_are_written_whole_once_and_in_order(
    configured, monkeypatch, background
):
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
    logs.flush()

    written = [json.loads(line) for line in stream.lines()]
    assert sorted((entry["thread"], entry["n"]) for entry in written) == [(t, n) for t in range(8) for n in range(300)]
    for t in range(8):
        assert [entry["n"] for entry in written if entry["thread"] == t] == list(range(300))


@pytest.fixture
def stall(configured, monkeypatch, background):
    """Call in the test (pytest's capture puts its own sys.stdout back between setup and the test):
    logging in the background to a stdout whose first write ("first") is held until `release` is
    set; returns (release, stream)."""

    def stalled() -> tuple[threading.Event, _Stream]:
        configured()
        logs.configure("INFO", "json")
        release = threading.Event()
        stream = _Stream(hold=release)
        monkeypatch.setattr("sys.stdout", stream)
        logs.emit(logs.get("web"), logging.INFO, "first", {})
        assert stream.writing.wait(5)  # the writer is stuck in its first write, as behind a stalled reader
        return release, stream

    return stalled


def test_in_the_background_no_logging_thread_waits_for_a_stalled_stdout_and_none_is_lost_at_flush(stall):
    release, stream = stall()
    started = time.monotonic()
    logs.get("web").warning("second")  # through logging: the same queue, the same order
    for n in range(100):
        logs.emit(logs.get("web"), logging.INFO, "more", {"n": n})
    assert time.monotonic() - started < 0.5
    release.set()
    logs.flush()
    logs.emit(logs.get("web"), logging.INFO, "after", {})  # written at once, after every queued line

    msgs = [json.loads(line)["msg"] for line in stream.lines()]
    assert msgs == ["first", "second", *["more"] * 100, "after"]


def test_in_the_background_a_stalled_stdout_holds_the_logging_thread_once_the_queue_is_full_and_loses_nothing(
    stall, monkeypatch
):
    release, stream = stall()
    monkeypatch.setattr(logs._OUTPUT, "limit", 50)

    def log_many() -> None:
        for n in range(80):
            logs.emit(logs.get("web"), logging.INFO, "more", {"n": n})

    logging_thread = threading.Thread(target=log_many)
    logging_thread.start()
    logging_thread.join(1.0)
    assert logging_thread.is_alive()  # held at the limit, not queuing without end
    assert logs._OUTPUT._queue.qsize() == 50
    release.set()
    logging_thread.join(5)
    logs.flush()

    lines = [json.loads(line) for line in stream.lines()]
    assert [line["msg"] for line in lines] == ["first", *["more"] * 80]
    assert [line["n"] for line in lines[1:]] == list(range(80))


def test_in_the_background_each_write_is_whole_lines_a_pipe_delivers_unmixed_with_another_process_s(stall):
    release, stream = stall()  # lines gather while the first write is held
    for n in range(200):
        logs.emit(logs.get("web"), logging.INFO, "webhook", {"n": n, "pad": "x" * 250})
    logs.emit(logs.get("web"), logging.INFO, "long", {"pad": "é" * 5000})
    logs.emit(logs.get("web"), logging.INFO, "last", {})
    release.set()
    logs.flush()

    sizes = [len(text.encode()) for _, text in stream.writes]
    assert all(text.endswith("\n") for _, text in stream.writes)
    # PIPE_BUF: a write to a pipe of at most that many bytes is never interleaved with another's.
    assert [size for size in sizes if size > select.PIPE_BUF] == [len(stream.writes[-2][1].encode())]
    assert len(stream.writes) < 40  # lines still share writes: about 13 of these to a write
    msgs = [json.loads(line)["msg"] for line in stream.lines()]
    assert msgs == ["first", *["webhook"] * 200, "long", "last"]


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


def test_a_forked_child_writes_its_own_lines_and_not_those_its_parent_had_queued(stall, monkeypatch):
    release, stream = stall()  # the parent's first line is being written
    logs.emit(logs.get("web"), logging.INFO, "parent queued", {})
    parent = logs._OUTPUT._listener  # noqa: SLF001 - the parent's writer, held up

    logs._OUTPUT._forget_parent()  # noqa: SLF001 - what os.fork runs in the child
    child = _Stream()
    monkeypatch.setattr("sys.stdout", child)
    logs.emit(logs.get("web"), logging.INFO, "child", {})
    monkeypatch.setattr("sys.stdout", stream)  # the parent's stdout, for the parent's writer
    release.set()
    parent.stop()

    assert [json.loads(line)["msg"] for line in child.lines()] == ["child"]
    assert [json.loads(line)["msg"] for line in stream.lines()] == ["first", "parent queued"]


@pytest.mark.slow
def test_a_stopped_service_has_written_every_webhook_line_in_the_order_answered(stack):
    web = stack.service(WEB_CONCURRENCY="2")
    payload = json.loads(fixture_bytes("datadog", "incident-created.json"))
    sizes = []
    for n in range(60):
        payload["id"] = f"log-order-{n:03d}"
        body = json.dumps(payload) + " " * n  # each webhook's line says how many bytes it had
        sizes.append(len(body))
        assert web.post("datadog", body).status_code == 202

    web.stop(timeout=15)

    lines = [json.loads(line) for line in web.logs().splitlines() if line.startswith("{")]
    assert [line["bytes"] for line in lines if line["msg"] == "webhook"] == sizes


@pytest.mark.slow
def test_a_stalled_log_pipe_holds_no_request_thread_of_gunicorn_s_own_warnings(stack):
    import socket
    import subprocess

    from tests.servers import ROOT
    from tests.servers import Service

    env = stack.env(WEB_CONCURRENCY="1", GUNICORN_THREADS="2", PYTHONUNBUFFERED="1")
    stack.migrate(env)
    web = Service("stalled", env, stack.tmp_path)
    # Its output (stdout and stderr) goes to a pipe nobody reads, as behind a stalled log router.
    web.popen = subprocess.Popen(
        web.command, cwd=ROOT, env=web.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    stack.processes.append(web)
    try:
        web.wait_until_up()
        invalid = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"  # gunicorn warns of each
        answered = 0
        for _ in range(1500):  # warnings enough to fill the pipe several times over
            with socket.create_connection(("127.0.0.1", web.port), timeout=2) as sock:
                sock.sendall(invalid)
                try:
                    answered += sock.recv(100).startswith(b"HTTP/1.1 400 ")
                except TimeoutError:
                    break
        assert answered == 1500, f"only {answered} invalid requests answered before a thread stalled"
        started = time.monotonic()
        assert web.http.get(web.url + "/healthz", timeout=3).status_code == 200
        assert time.monotonic() - started < 1
    finally:
        drain = threading.Thread(target=web.popen.stdout.read, daemon=True)
        drain.start()
        web.stop(timeout=15)
        drain.join(5)
        web.popen.stdout.close()
