"""caselink's gunicorn worker: gthread, with requests read in full before a thread takes them.

gunicorn.conf.py names it (`worker_class = "caselink.serving.BufferingWorker"`).
It changes two things about gunicorn's threaded worker, and nothing else:

- **Slow clients tie no thread.** gthread hands a connection to a thread as soon
  as its first bytes arrive, and the thread then waits for the rest of the head
  and body: a dozen clients sending a byte a second took every thread. Here the
  worker's event loop reads each request (head and body, as declared by
  Content-Length or chunked) into memory, without blocking, and only a complete
  request goes to a thread, as a buffering proxy would do. A head must arrive
  within `HEAD_TIMEOUT` seconds and a body within `BODY_TIMEOUT` seconds after
  it; otherwise the answer is 408 and the connection is closed. A head over
  `HEAD_LIMIT` bytes gets 431. Bodies are buffered up to the app's
  `MAX_CONTENT_LENGTH` (Flask's, which caselink sets from MAX_BODY_BYTES); a
  larger declared body goes straight to the app, which refuses it (413) without
  reading it, and the connection is closed after the answer. A chunked body is
  refused here (413) as soon as its chunk sizes add up past the limit, and an
  absurd chunk-size line with 400. All the requests a worker is still reading
  hold at most `BUFFERED_BODIES` bodies at the limit; past that, 503.
  Writes are bounded too: a thread's send waits `SEND_TIMEOUT` at most, and a
  pipelined request waits in the loop until the client has taken the answer
  before it.
- **Every worker takes its share of connections.** gunicorn's workers accept
  from one shared socket, and whichever wakes first takes a connection; a
  kept-alive connection stays with its worker for life. When a load balancer
  opens its pool at once, the worker that is running drains the accept queue
  before the other gets a CPU (measured on two CPUs with wrk: 32/0 and 29/3
  splits in most runs), and one process serves every connection for the life
  of the service. Here each worker publishes the connections it holds in memory shared
  with its siblings, and while it holds more than `ACCEPT_SLACK` beyond the least
  loaded of them it leaves the socket to them, re-checking every `ACCEPT_RECHECK`
  seconds; after `ACCEPT_DEFER` seconds it takes one connection anyway (so a
  sibling that is stuck or gone never stops the service). The least loaded
  worker always accepts, so short connections never wait on the balancing.
  Connections that are already open are balanced too: a worker that holds more
  than `REBALANCE_SLACK` beyond a sibling answers one request with
  `Connection: close` every `REBALANCE_INTERVAL` seconds, and the client's new
  connection goes to the sibling (while the sibling takes none, stopped or still
  loading the app, less and less often, down to one every `REBALANCE_BACKOFF`).
  Otherwise a worker started late (a service started under load, a worker
  replaced after a crash or `max_requests`) would get none of a load
  balancer's pooled connections, which never close.
- **A full worker still takes new connections.** gthread stops accepting once a
  worker holds `worker_connections`, so a few thousand idle connections left
  every new one, /healthz included, waiting in the kernel's queue until a head
  timed out (9-10 s). Here a worker at its cap closes the connection that has
  waited longest to take the waiting one: kept alive with no request since, or
  still sending its request, which is answered 503
  (`caselink_connections_shed_total` counts them). A request that arrives whole
  is handed to a thread at once, so the connections left waiting are the slow
  and the idle ones; connections being served are never closed.

TLS and HTTP/2 prior knowledge are gunicorn's business: with either configured,
requests are read by threads as in gthread.
"""

from __future__ import annotations

import errno
import fcntl
import json
import mmap
import os
import socket
import struct
import time
from functools import partial
from typing import Any

from gunicorn.workers.gthread import TConn
from gunicorn.workers.gthread import ThreadWorker

# A request's head (request line and headers) must arrive within this many seconds
# of the connection opening or, on a kept-alive connection, of its first byte.
HEAD_TIMEOUT = 10.0
# The body must arrive within this many seconds after the head.
BODY_TIMEOUT = 30.0
# Larger heads are refused with 431 (gunicorn's own limits are far higher).
HEAD_LIMIT = 64 * 1024
# Bodies are buffered up to the app's MAX_CONTENT_LENGTH, or this when it has none.
DEFAULT_BODY_LIMIT = 4 * 1024 * 1024
# How long a stopping worker still waits for the rest of a request under way.
STOP_LINGER = 2.0
# A worker leaves new connections to its siblings while it holds more than this many
# connections beyond the least loaded live one (so only real imbalance, such as a pool
# of kept-alive connections opened at once, is balanced; short connections never wait).
ACCEPT_SLACK = 2
# A worker closes kept-alive connections (one at a time, after an answer) while it holds more
# than this many beyond a live sibling: more than ACCEPT_SLACK, so that the connections
# moved are not moved back ...
REBALANCE_SLACK = 4
# ... at most one every this many seconds: a pool of 32 held by one of two workers is
# shared out within a second, and a reconnect costs the client one handshake ...
REBALANCE_INTERVAL = 0.05
# ... and, while the sibling takes none of the connections closed for it (stopped, or still
# loading the app: the client's new connection comes back here), twice as long each time, up to this.
REBALANCE_BACKOFF = 2.0
# How long at most a worker leaves a waiting connection to a less loaded sibling
# (a sibling that is stuck or starved of CPU must not stop the service) ...
ACCEPT_DEFER = 0.01
# ... re-checking the sibling's count this often meanwhile.
ACCEPT_RECHECK = 0.001
# A thread writing an answer waits at most this long for the client to take some of it;
# then the connection is closed. A connection whose last answer the client has not
# taken yet waits as long (in the event loop) before its next request is served.
SEND_TIMEOUT = 5.0
# A worker buffers at most this many bodies' worth (at the body limit) of incomplete
# requests, 64 MiB with MAX_BODY_BYTES' default; a connection that would take it past
# that is answered 503.
BUFFERED_BODIES = 16
# Sibling workers whose loads are shared (gunicorn workers of one master).
MAX_WORKERS = 64

_RECV = 64 * 1024
# Connections buffering less than this are not worth adding up against the budget.
_BUDGET_CHECK = 16 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class BufferingWorker(ThreadWorker):
    """gunicorn's gthread worker that reads whole requests in its event loop (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Runs in the master, before the fork: the slot is the master's to hand out.
        self._slot = _LOADS.reserve(self)
        self._reading: dict[BufferedConn, None] = {}
        self._next_sweep = 0.0
        self._deferred_since: float | None = None
        self._next_rebalance = 0.0
        self._rebalance_wait = REBALANCE_INTERVAL
        self._rebalanced_towards: int | None = None  # what the least loaded sibling held at the last close
        self._draining: dict[BufferedConn, float] = {}
        self._stopping_since: float | None = None
        self.body_limit = DEFAULT_BODY_LIMIT
        self.buffer_limit = BUFFERED_BODIES * DEFAULT_BODY_LIMIT
        self.buffering = False

    # -- the shared load --------------------------------------------------------

    @property
    def nr_conns(self) -> int:
        return self.__dict__.get("_nr_conns", 0)

    @nr_conns.setter
    def nr_conns(self, value: int) -> None:
        self.__dict__["_nr_conns"] = value
        slot = self.__dict__.get("_slot")
        if slot is not None:
            _LOADS.publish(slot, value)

    @property
    def conns_in_use(self) -> int:
        """Connections with a request being served or kept alive for the next; not those still sending one."""
        return self.nr_conns - len(self._reading)

    def init_process(self) -> None:
        _LOADS.claim(self._slot, os.getpid())
        self.buffering = not self.cfg.is_ssl and self.cfg.http2_cleartext not in ("prior-knowledge", "both")
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        limit = getattr(self.wsgi, "config", {}).get("MAX_CONTENT_LENGTH")
        self.body_limit = limit if isinstance(limit, int) and limit > 0 else DEFAULT_BODY_LIMIT
        self.buffer_limit = BUFFERED_BODIES * self.body_limit

    def run(self) -> None:
        try:
            super().run()
        finally:
            _LOADS.release(self._slot)

    def _should_defer(self) -> bool:
        """Whether a live sibling holds more than ACCEPT_SLACK connections fewer than this worker.

        The least loaded worker never defers, so the workers are never all
        paused at once, and short connections (one request each) never wait.
        """
        return not _LOADS.least_loaded(self._slot, self.nr_conns - ACCEPT_SLACK)

    def set_accept_enabled(self, enabled: bool) -> None:
        if enabled and self._deferred_since is not None:
            enabled = False
        elif not enabled and self.alive and self._deferred_since is None and self._sheddable():
            # At the cap (gthread's reason to stop accepting): a waiting connection takes the
            # place of one that has made the least progress (accept, _shed).
            enabled = True
        super().set_accept_enabled(enabled)

    def accept(self, listener: socket.socket) -> None:
        now = time.monotonic()
        if self._should_defer():
            if self._deferred_since is None:
                self._deferred_since = now
            if now - self._deferred_since < ACCEPT_DEFER:
                # Leave the waiting connection to the sibling; re-checked every ACCEPT_RECHECK.
                super().set_accept_enabled(False)
                return
            # The sibling took nothing for ACCEPT_DEFER (stuck, or starved of CPU): take one anyway.
        self._deferred_since = None
        if self.nr_conns >= self.worker_connections and not self._shed():
            super().set_accept_enabled(False)
            return
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        # A thread's read never waits longer than a body may take, whatever reaches it.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(BODY_TIMEOUT), 0))
        # Nor does a write wait longer than SEND_TIMEOUT for a client that stopped reading.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(SEND_TIMEOUT), 0))
        conn = BufferedConn(self.cfg, client, address, listener.getsockname())
        conn.deadline = now + HEAD_TIMEOUT
        conn.waiting_since = now
        self.enqueue_req(conn)

    # -- at the cap: the least progress makes room -------------------------------

    def _sheddable(self) -> bool:
        return self.nr_conns >= self.worker_connections and bool(
            self.keepalived_conns or self.pending_conns or self._reading
        )

    def _shed(self) -> bool:
        """Close the connection that has waited longest, to make room for a new one: kept alive
        with no request since, or still sending its request (answered 503). Connections being
        served are never closed; False when every connection is."""
        # Imported here: gunicorn imports this module before gunicorn.conf.py's on_starting
        # names the directory every process's counters go to, which metrics reads at import.
        from caselink.metrics import CONNECTIONS_SHED

        # Each queue's first is its longest waiting: kept-alive ones are in the order their
        # answers went, and those still sending in the order their requests began.
        keepalive = self.cfg.keepalive
        idle = min(
            (queue for queue in (self.keepalived_conns, self.pending_conns) if queue),
            key=lambda queue: queue[0].timeout,
            default=None,
        )
        sending = next(iter(self._reading), None)
        if idle is None and sending is None:
            return False
        if idle is not None and (sending is None or idle[0].timeout - keepalive <= sending.waiting_since):
            conn = idle.popleft()
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
            self.nr_conns -= 1
            conn.close()
            CONNECTIONS_SHED.labels("idle").inc()
            return True
        assert sending is not None
        oldest = sending
        self._unregister(oldest)
        if oldest.buffer:
            message = "this server holds as many connections as it may and this request was the slowest; send it again"
            self._answer_and_close(oldest, 503, "server_busy", message)
            CONNECTIONS_SHED.labels("sending").inc()
        else:
            self._drop(oldest)
            CONNECTIONS_SHED.labels("idle").inc()
        return True

    # -- reading requests in the event loop ----------------------------------------

    def enqueue_req(self, conn: TConn) -> None:
        if not self.buffering or not isinstance(conn, BufferedConn):
            super().enqueue_req(conn)
            return
        if conn.parser is not None:
            if conn not in self._draining and _unsent(conn.sock):
                # The client has not taken the last answer yet: its next request waits, in
                # the loop, rather than a thread blocking on the answer to it (see _sweep).
                self._draining[conn] = time.monotonic() + SEND_TIMEOUT
                return
            # Bytes read ahead of the last request (a pipelined one) start the next.
            conn.buffer += conn.parser.unreader.take_buffered()
        if conn.deadline is None:
            conn.waiting_since = time.monotonic()
            conn.deadline = conn.waiting_since + HEAD_TIMEOUT
        if self._advance(conn, registered=False):
            return
        conn.sock.setblocking(False)
        self._reading[conn] = None
        self.poller.register(conn.sock, _READ, partial(self._on_readable, conn))

    def _on_readable(self, conn: BufferedConn, _sock: socket.socket) -> None:
        try:
            data = conn.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._unregister(conn)
            if conn.head_end:
                # The client stopped sending in the middle of a body (a half-close): the
                # app reads what came, finds it cut short and answers 400 before closing.
                conn.next_request()
                super().enqueue_req(conn)
            else:
                self._drop(conn)
            return
        conn.buffer += data
        if len(conn.buffer) > _BUDGET_CHECK and sum(len(other.buffer) for other in self._reading) > self.buffer_limit:
            # Every connection may send a request as large as the limit; all of them at
            # once must not take the machine's memory. Senders retry a 503.
            self._unregister(conn)
            message = "this server is buffering too many large requests; send it again later"
            self._answer_and_close(conn, 503, "server_busy", message)
            return
        self._advance(conn, registered=True)

    def _advance(self, conn: BufferedConn, *, registered: bool) -> bool:
        """Hand the request to a thread once complete, or refuse it; True when the connection left the loop."""
        try:
            complete = conn.read_enough(self.body_limit)
        except _RefusedError as refusal:
            if registered:
                self._unregister(conn)
            self._answer_and_close(conn, refusal.status, refusal.code, refusal.message)
            return True
        if not complete:
            return False
        if registered:
            self._unregister(conn)
        conn.next_request()
        super().enqueue_req(conn)
        return True

    def handle_request(self, req: Any, conn: TConn) -> Any:
        now = time.monotonic()
        if now >= self._next_rebalance and self.alive:
            # Looked at once per REBALANCE_INTERVAL at most, not per request: the shared counts
            # are read in a loop over every slot. Threads may race here; two closes at once is harmless.
            self._next_rebalance = now + self._rebalance(req)
        return super().handle_request(req, conn)

    def _rebalance(self, req: Any) -> float:
        """Mark `req`'s answer to close its connection if a live sibling holds more than
        REBALANCE_SLACK fewer; the seconds until the next look."""
        fewest = _LOADS.fewest(self._slot)
        if fewest is None or fewest >= self.nr_conns - REBALANCE_SLACK:
            self._rebalanced_towards, self._rebalance_wait = None, REBALANCE_INTERVAL
            return REBALANCE_INTERVAL
        if self._rebalanced_towards is not None and fewest <= self._rebalanced_towards:
            # The sibling took none of the connections closed for it: look less and less often.
            self._rebalance_wait = min(self._rebalance_wait * 2, REBALANCE_BACKOFF)
        else:
            self._rebalance_wait = REBALANCE_INTERVAL
        self._rebalanced_towards = fewest
        from caselink.metrics import CONNECTIONS_REBALANCED  # see _shed

        # Answered with Connection: close, then closed: the client connects again, and
        # accept() leaves the new connection to the sibling holding fewer.
        req.must_close = True
        CONNECTIONS_REBALANCED.inc()
        return self._rebalance_wait

    def handle(self, conn: TConn) -> Any:
        if isinstance(conn, BufferedConn) and conn.buffer:
            data, conn.buffer = bytes(conn.buffer), bytearray()
            conn.init()
            conn.parser.unreader.unread(data)
            conn.data_ready = True
        return super().handle(conn)

    def _keepalive_after(self, conn: TConn, keepalive: bool) -> bool:
        if isinstance(conn, BufferedConn) and conn.body_unread:
            # The app refused a body too large to buffer; reading it here would hold the thread.
            conn.body_unread = False
            return False
        return super()._keepalive_after(conn, keepalive)

    def finish_request(self, conn: TConn, fs: Any) -> None:
        if isinstance(conn, BufferedConn):
            conn.deadline = None
        super().finish_request(conn, fs)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        if self._deferred_since is not None and not self._accepting:
            timeout = min(timeout, ACCEPT_RECHECK)
        if self._reading:
            timeout = min(timeout, 0.25)
        if self._draining:
            timeout = min(timeout, 0.02)
            self._next_sweep = min(self._next_sweep, time.monotonic() + 0.02)
        super().wait_for_and_dispatch_events(timeout)
        now = time.monotonic()
        if self._deferred_since is not None and (
            not self._should_defer() or now - self._deferred_since >= ACCEPT_DEFER
        ):
            # The sibling caught up (or took nothing for too long): listen again, and
            # accept() decides afresh for the next connection.
            if not self._should_defer():
                self._deferred_since = None  # else it stays expired: accept() takes the next one
            if self.alive and self.nr_conns < self.worker_connections:
                super().set_accept_enabled(True)
        if now >= self._next_sweep:
            self._next_sweep = now + 0.25
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        if not self.alive and self._stopping_since is None:
            self._stopping_since = now
        for conn, deadline in list(self._draining.items()):
            if not _unsent(conn.sock):
                self.enqueue_req(conn)
                self._draining.pop(conn, None)
            elif now >= deadline or self._stopping_since is not None:
                # Its answers are not being read: close it, its next requests unanswered.
                self._draining.pop(conn, None)
                self.nr_conns -= 1
                conn.close()
        for conn in list(self._reading):
            if self._stopping_since is not None and conn.deadline is not None:
                # Stopping: a request under way gets STOP_LINGER more seconds at most, not its whole timeout.
                conn.deadline = min(conn.deadline, self._stopping_since + STOP_LINGER)
            if self._stopping_since is not None and not conn.buffer:
                # A connection that sent nothing yet is closed, not waited for.
                self._unregister(conn)
                self._drop(conn)
            elif conn.deadline is not None and now >= conn.deadline:
                self._unregister(conn)
                part = "body" if conn.head_end else "request head"
                limit = BODY_TIMEOUT if conn.head_end else HEAD_TIMEOUT
                if self._stopping_since is not None:
                    # Senders retry a 503, which this is: nothing of the request was kept.
                    message = f"the {part} did not arrive before this server stopped; send it again"
                    self._answer_and_close(conn, 503, "server_stopping", message)
                else:
                    message = f"the {part} did not arrive within {limit:g} s"
                    self._answer_and_close(conn, 408, "request_timeout", message)

    def _unregister(self, conn: BufferedConn) -> None:
        self._reading.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _answer_and_close(self, conn: BufferedConn, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        try:
            conn.sock.setblocking(False)
            conn.sock.send(head + body)
        except OSError:
            pass  # a client that stopped reading gets nothing more
        self._drop(conn)

    def _drop(self, conn: BufferedConn) -> None:
        self._reading.pop(conn, None)
        self.nr_conns -= 1
        conn.close()


_READ = 1  # selectors.EVENT_READ
_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
# A chunk-size line (size and extensions) longer than this is refused.
_CHUNK_LINE_LIMIT = 1024
# A chunk size of more hex digits than this (16 EiB) is no size at all.
_CHUNK_SIZE_DIGITS = 16


def _unsent(sock: socket.socket) -> int:
    """Bytes written to the socket that the client's window has not taken yet (Linux; 0 elsewhere)."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQNSD, b"\0\0\0\0"))[0]
    except OSError:
        return 0


_SIOCOUTQNSD = 0x894B  # linux/sockios.h


class _RefusedError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class BufferedConn(TConn):
    """A connection and the request read so far; how much is enough is decided here.

    Only the framing is read (where the head ends, Content-Length,
    Transfer-Encoding: chunked, Expect); anything it cannot make sense of is
    handed to gunicorn's parser as it stands, which refuses it.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.buffer = bytearray()
        self.deadline: float | None = None
        # When the request under way began to arrive (time.monotonic()).
        self.waiting_since = 0.0
        self.head_end = 0
        self.body_end: int | None = None  # for a body of declared length
        self.chunk_at: int | None = None  # for a chunked body: where the next chunk starts
        self.chunked_size = 0  # for a chunked body: data bytes in the chunks before chunk_at
        self.body_unread = False

    def next_request(self) -> None:
        """The request in the buffer is complete: a thread takes it, and the next starts afresh."""
        self.deadline = None
        self.head_end = 0
        self.body_end = None
        self.chunk_at = None
        self.chunked_size = 0

    def read_enough(self, body_limit: int) -> bool:
        """Whether the buffer holds the whole request; raises _RefusedError for a head too large."""
        if not self.head_end:
            # RFC 9112 section 2.2: empty lines before the request line are ignored.
            while self.buffer[:2] == b"\r\n" or self.buffer[:1] == b"\n":
                del self.buffer[: 2 if self.buffer[:1] == b"\r" else 1]
            end = self.buffer.find(b"\r\n\r\n")
            bare = self.buffer.find(b"\n\n")
            if 0 <= bare and (end < 0 or bare < end):
                # A head ended by bare LFs: gunicorn's parser refuses it (400) rather than it waiting for a CRLF.
                return True
            if end < 0:
                if len(self.buffer) > HEAD_LIMIT:
                    raise _RefusedError(431, "headers_too_large", f"the request head is over {HEAD_LIMIT} bytes")
                return False
            if end + 4 > HEAD_LIMIT:
                raise _RefusedError(431, "headers_too_large", f"the request head is over {HEAD_LIMIT} bytes")
            if self._read_head(end, body_limit):
                return True
        if self.body_end is not None:
            return len(self.buffer) >= self.body_end
        return self._chunks_complete(body_limit)

    def _read_head(self, end: int, body_limit: int) -> bool:
        """Note where the body ends; True when the request needs nothing more (no body, or not ours to read)."""
        self.head_end = end + 4
        self.deadline = time.monotonic() + BODY_TIMEOUT
        request_line, *lines = bytes(self.buffer[:end]).split(b"\r\n")
        lengths, codings, expect = set(), [], False
        for line in lines:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                lengths.add(value.strip())
            elif name == b"transfer-encoding":
                codings += [c.strip().lower() for c in value.split(b",")]
            elif name == b"expect" and value.strip().lower() == b"100-continue":
                expect = True
        if codings:
            if codings[-1] != b"chunked" or lengths:
                return True  # gunicorn's parser refuses these
            self.chunk_at = self.head_end
        elif lengths:
            [length] = lengths if len(lengths) == 1 else [b"x"]
            if not length.isdigit():
                return True  # refused by gunicorn's parser
            if int(length) > body_limit:
                self.body_unread = True
                return True
            self.body_end = self.head_end + int(length)
            if len(self.buffer) >= self.body_end:
                return True
        else:
            return True
        if expect and request_line.endswith(b"HTTP/1.1"):
            # The client waits for this before sending the body; gunicorn would send it
            # once the thread starts, too late. It is sent here, and the header dropped.
            self._drop_expect(lines, request_line)
            try:
                self.sock.send(_CONTINUE)
            except OSError:
                pass
        return False

    def _drop_expect(self, lines: list[bytes], request_line: bytes) -> None:
        kept = [line for line in lines if line.partition(b":")[0].strip().lower() != b"expect"]
        head = b"\r\n".join([request_line, *kept]) + b"\r\n\r\n"
        shift = self.head_end - len(head)
        self.buffer[: self.head_end] = head
        self.head_end -= shift
        if self.body_end is not None:
            self.body_end -= shift
        if self.chunk_at is not None:
            self.chunk_at -= shift

    def _chunks_complete(self, body_limit: int) -> bool:
        """Whether the chunked body is complete; raises _RefusedError (413) as soon as it cannot fit the limit."""
        buffer, at = self.buffer, self.chunk_at
        assert at is not None
        # Chunk-size lines and trailers add to the data: allow for them, but not without bound.
        if len(buffer) - self.head_end > 2 * body_limit + HEAD_LIMIT:
            raise _RefusedError(413, "payload_too_large", f"the request body is over {body_limit} bytes")
        while True:
            line_end = buffer.find(b"\r\n", at)
            if line_end < 0:
                if len(buffer) - at > _CHUNK_LINE_LIMIT:
                    raise _RefusedError(400, "bad_chunked_body", f"a chunk-size line is over {_CHUNK_LINE_LIMIT} bytes")
                return False
            digits = bytes(buffer[at:line_end]).split(b";")[0].strip()
            if not digits or digits.strip(b"0123456789abcdefABCDEF"):
                return True  # not a chunk size: gunicorn's parser refuses it
            if len(digits.lstrip(b"0")) > _CHUNK_SIZE_DIGITS:
                raise _RefusedError(400, "bad_chunked_body", f"chunk size {digits[:32].decode()}... is not a size")
            size = int(digits, 16)
            if self.chunked_size + size > body_limit:
                raise _RefusedError(413, "payload_too_large", f"the request body is over {body_limit} bytes")
            if size == 0:
                trailers = line_end + 2
                if buffer[trailers : trailers + 2] == b"\r\n":
                    return True
                return buffer.find(b"\r\n\r\n", trailers) >= 0
            following = line_end + 2 + size + 2
            if len(buffer) < following:
                self.chunk_at = at
                return False
            at = following
            self.chunk_at = at
            self.chunked_size += size


class _Loads:
    """Connections held by each worker of this master, in memory shared across the fork.

    The master hands each new worker a slot (in the worker's __init__, before
    the fork); the worker writes its pid and its connection count there.
    Slot i holds (pid, connections) as two signed 64-bit numbers.
    """

    def __init__(self) -> None:
        self._memory: mmap.mmap | None = None
        self._cells: Any = None
        self._holders: dict[int, Any] = {}

    def reserve(self, worker: Any) -> int:
        if self._memory is None:
            self._memory = mmap.mmap(-1, MAX_WORKERS * 16)
            self._cells = memoryview(self._memory).cast("q")
        for slot in range(MAX_WORKERS):
            holder = self._holders.get(slot)
            if holder is None or not _alive(getattr(holder, "pid", None)):
                self._holders[slot] = worker
                self._cells[2 * slot] = 0
                self._cells[2 * slot + 1] = 0
                return slot
        raise RuntimeError(f"more than {MAX_WORKERS} gunicorn workers")

    def claim(self, slot: int, pid: int) -> None:
        self._holders = {}  # the master's bookkeeping; a worker has no use for it
        self._cells[2 * slot + 1] = 0
        self._cells[2 * slot] = pid

    def release(self, slot: int) -> None:
        self._cells[2 * slot] = 0
        self._cells[2 * slot + 1] = 0

    def publish(self, slot: int, connections: int) -> None:
        self._cells[2 * slot + 1] = connections

    def fewest(self, slot: int) -> int | None:
        """The fewest connections a live sibling holds; None when there is none."""
        cells = self._cells
        found = None
        for other in range(MAX_WORKERS):
            pid = cells[2 * other]
            if other == slot or pid == 0 or (found is not None and cells[2 * other + 1] >= found):
                continue
            if _alive(pid):
                found = cells[2 * other + 1]
            else:
                self.release(other)  # killed without a word; the master gives the slot out again
        return found

    def least_loaded(self, slot: int, connections: int) -> bool:
        """Whether no live sibling holds fewer connections than `connections`."""
        fewest = self.fewest(slot)
        return fewest is None or fewest >= connections


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return isinstance(pid, str)  # gunicorn's "[booting]" before the fork
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_LOADS = _Loads()
