"""caselink's gunicorn worker: requests read whole before a thread takes them, connections shared out."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from caselink.serving import HEAD_LIMIT
from caselink.serving import HEAD_TIMEOUT
from caselink.serving import BufferedConn
from caselink.serving import _RefusedError
from tests.conftest import fixture_bytes
from tests.servers import WEBHOOK_SECRET
from tests.servers import Service

# -- how much of a request is enough (unit) -------------------------------------------


@pytest.fixture
def conn() -> Iterator[BufferedConn]:
    ours, theirs = socket.socketpair()
    built = BufferedConn(None, ours, ("127.0.0.1", 1), ("127.0.0.1", 2))
    yield built
    ours.close()
    theirs.close()


def _complete_after(conn: BufferedConn, pieces: list[bytes], limit: int = 1 << 20) -> list[bool]:
    seen = []
    for piece in pieces:
        conn.buffer += piece
        seen.append(conn.read_enough(limit))
    return seen


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


_bodies = st.binary(max_size=300)
_cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


def _chunked(body: bytes, sizes: list[int]) -> bytes:
    out, at = b"", 0
    for size in sizes:
        piece = body[at : at + size]
        if not piece:
            break
        out += b"%x;ext=1\r\n" % len(piece) + piece + b"\r\n"
        at += len(piece)
    if at < len(body):
        out += b"%X\r\n" % (len(body) - at) + body[at:] + b"\r\n"
    return out + b"0\r\n\r\n"


@settings(max_examples=150, deadline=None)
@given(body=_bodies, cuts=_cuts, chunked=st.booleans(), sizes=st.lists(st.integers(1, 64), max_size=8))
def test_a_request_is_complete_exactly_when_its_last_byte_arrives(body, cuts, chunked, sizes):
    head = b"POST /webhooks/datadog HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if chunked:
        request = head + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(body, sizes)
    else:
        request = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    ours, theirs = socket.socketpair()
    try:
        conn = BufferedConn(None, ours, ("127.0.0.1", 1), ("127.0.0.1", 2))
        seen = _complete_after(conn, _split(request, cuts))
    finally:
        ours.close()
        theirs.close()
    assert seen[-1] is True
    assert not any(seen[:-1]), "a request was handed on before its last byte"


@settings(max_examples=50, deadline=None)
@given(body=_bodies, trailers=st.sampled_from([b"", b"X-Checksum: 1\r\n", b"A: b\r\nC: d\r\n"]))
def test_a_chunked_body_with_trailers_is_complete_after_the_blank_line(body, trailers):
    request = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(body, [7])[:-2] + trailers + b"\r\n"
    ours, theirs = socket.socketpair()
    try:
        conn = BufferedConn(None, ours, ("127.0.0.1", 1), ("127.0.0.1", 2))
        seen = _complete_after(conn, [request[:-1], request[-1:]])
    finally:
        ours.close()
        theirs.close()
    assert seen == [False, True]


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        # What gunicorn's parser refuses is handed to it at once, never waited for.
        b"POST /x HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_a_request_without_a_body_or_with_bad_framing_is_handed_on_at_its_head(conn, head):
    conn.buffer += head
    assert conn.read_enough(1 << 20) is True


def test_a_body_over_the_limit_is_not_buffered_and_the_connection_closes_after_the_answer(conn):
    conn.buffer += b"POST /x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n"
    assert conn.read_enough(4096) is True
    assert conn.body_unread is True


def test_a_head_over_the_limit_is_refused_with_431(conn):
    conn.buffer += b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"a" * HEAD_LIMIT
    with pytest.raises(_RefusedError) as refused:
        conn.read_enough(1 << 20)
    assert refused.value.status == 431


def test_expect_100_continue_is_answered_by_the_worker_and_the_header_dropped(conn):
    conn.buffer += b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    assert conn.read_enough(1 << 20) is False
    conn.buffer += b"{}"
    assert conn.read_enough(1 << 20) is True
    assert bytes(conn.buffer) == b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


# -- real gunicorn ----------------------------------------------------------------------


class Trickle:
    """Connections that send a request head, then one more byte a second (or stop, for a body)."""

    def __init__(self, port: int, heads: list[bytes], trickle: list[bytes], before: bytes | None = None) -> None:
        self.sockets = []
        for head in heads:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if before is not None:  # a request answered first: the slow one comes on a kept-alive connection
                sock.sendall(before)
                _read_answer(sock)
            sock.sendall(head)
            self.sockets.append(sock)
        self.trickle = trickle
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        sent = 0
        while not self.stopped.wait(1.0):
            for sock, data in zip(self.sockets, self.trickle, strict=True):
                try:
                    sock.send(data[sent % len(data) : sent % len(data) + 1])
                except OSError:
                    pass
            sent += 1

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        for sock in self.sockets:
            sock.close()


SLOW = {
    # What gunicorn's gthread worker gave a thread each, for as long as the client kept sending.
    "head": (b"POST /webhooks/datadog HTTP/1.1\r\nHost: x\r\n", b"X-Slow: a\r\n"),
    "body": (b"POST /webhooks/datadog HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", b"{}"),
    "second head": (b"POST /webhooks/datadog HTTP/1.1\r\nHost: x\r\n", b"X-Slow: a\r\n"),
    "pipelined head": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nPOST /webhooks/datadog HTTP/1.1\r\nHost: x\r\n",
        b"X-Slow: a\r\n",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("stuck_in", list(SLOW))
def test_clients_sending_a_byte_a_second_leave_healthz_and_webhooks_answered_promptly(stack, stuck_in):
    web = stack.service(WEB_CONCURRENCY="2")
    head, trickle = SLOW[stuck_in]
    # More slow connections than the two processes have request threads (2 x 8).
    before = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" if stuck_in == "second head" else None
    slow = Trickle(web.port, [head] * 20, [trickle] * 20, before)
    payload = json.loads(fixture_bytes("datadog", "incident-created.json"))
    opened = time.monotonic()
    try:
        time.sleep(1.5)
        for number in range(4):
            started = time.monotonic()
            health = web.http.get(web.url + "/healthz", timeout=5, headers={"Connection": "close"})
            payload["id"] = f"slow-clients-{stuck_in}-{number}"
            webhook = web.post("datadog", json.dumps(payload), headers={"Connection": "close"})
            elapsed = time.monotonic() - started
            assert (health.status_code, webhook.status_code) == (200, 202), webhook.text
            assert elapsed < 2.0, f"answered in {elapsed:.2f} s with slow clients open"
        if stuck_in == "head":
            # A head still incomplete after HEAD_TIMEOUT is answered 408 and its connection closed.
            time.sleep(max(0.0, opened + HEAD_TIMEOUT + 1.0 - time.monotonic()))
            slow.stopped.set()
            answer = slow.sockets[0].recv(4096)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"
    finally:
        slow.close()


@pytest.mark.slow
def test_a_request_sent_in_pieces_with_expect_100_continue_is_answered_once(stack):
    web = stack.service()
    body = fixture_bytes("datadog", "incident-created.json")
    head = (
        "POST /webhooks/datadog HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {WEBHOOK_SECRET}\r\nExpect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", web.port), timeout=5) as sock:
        sock.sendall(head)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        for at in range(0, len(body), 100):
            sock.sendall(body[at : at + 100])
            time.sleep(0.01)
        answer = _read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 202 "), answer
    assert b"100 Continue" not in answer


def _read_answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
    while len(rest) < length:
        rest += sock.recv(4096)
    return head + b"\r\n\r\n" + rest


def _connections_per_worker(service: Service) -> list[int]:
    """Established connections to the service's port that each gunicorn worker holds."""
    established = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == service.port and fields[3] == "01":
            established.add(fields[9])
    split = []
    master = service.popen.pid
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            if int(stat[stat.rfind(")") + 2 :].split()[1]) != master:
                continue
            links = [os.readlink(fd.path) for fd in os.scandir(f"/proc/{entry.name}/fd")]
        except OSError:
            continue
        split.append(len({link[8:-1] for link in links if link.startswith("socket:[")} & established))
    return sorted(split)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads connections from Linux's /proc")
def test_every_worker_takes_its_share_of_keep_alive_connections_opened_together(stack):
    web = stack.service(WEB_CONCURRENCY="2")
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(3):
        sockets = [socket.socket() for _ in range(32)]
        try:
            for sock in sockets:
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", web.port))
            for sock in sockets:
                sock.settimeout(5)
                sock.sendall(request)
            for sock in sockets:
                assert _read_answer(sock).startswith(b"HTTP/1.1 200 ")
            split = _connections_per_worker(web)
        finally:
            for sock in sockets:
                sock.close()
        assert sum(split) == 32
        assert max(split) <= 20, f"connections per worker {split}: one worker took most of them"
        time.sleep(0.3)


# -- the shared load (unit) ---------------------------------------------------------------


class _Worker:
    pid: int | str = "[booting]"


def test_a_worker_accepts_only_while_no_live_sibling_holds_fewer_connections():
    import subprocess
    import sys

    from caselink.serving import _Loads

    loads = _Loads()
    mine, sibling, gone = _Worker(), _Worker(), _Worker()
    slots = [loads.reserve(worker) for worker in (mine, sibling, gone)]
    assert len(set(slots)) == 3, "each worker has a slot of its own"
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pids = (os.getpid(), os.getppid(), int(finished.stdout))
    for worker, slot, pid in zip((mine, sibling, gone), slots, pids, strict=True):
        worker.pid = pid
        loads.claim(slot, pid)  # what each worker does once forked
    loads.publish(slots[0], 3)
    loads.publish(slots[1], 3)
    loads.publish(slots[2], 0)  # a sibling killed without a word still shows its count

    assert loads.least_loaded(slots[0], 3) is True  # ties share; the dead one does not count
    assert loads._cells[2 * slots[2]] == 0  # noqa: SLF001 - and its slot is free again
    assert loads.least_loaded(slots[0], 4) is False
    loads.release(slots[1])
    assert loads.least_loaded(slots[0], 4) is True


@pytest.mark.slow
def test_a_stopping_service_answers_a_request_still_arriving_503_and_exits_promptly(stack):
    web = stack.service()
    with socket.create_connection(("127.0.0.1", web.port), timeout=10) as sock:
        sock.sendall(b"POST /webhooks/datadog HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        time.sleep(0.5)
        stopping = time.monotonic()
        web.signal(signal.SIGTERM)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "server_stopping"
    web.popen.wait(15)
    assert time.monotonic() - stopping < 10
