"""Hostile requests through real gunicorn: how many of N generated requests got a 5xx (the answer must be 0).

The requests are tests/hostile_requests.py's; one in 20 is also a chunked webhook with broken
framing on a raw socket. Each store gets its own caselink (dry-run, a fresh database).

    python bench/fuzz_requests.py                      # 10,000 requests per store, SQLite and PostgreSQL
    python bench/fuzz_requests.py --requests 2000 --stores sqlite
"""

from __future__ import annotations

import argparse
import collections
import http.client
import socket
import sys
import time

import harness
from hypothesis import HealthCheck
from hypothesis import Phase
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from tests import hostile_requests as hostile

BROKEN_CHUNKS = [b"zz\r\n{}\r\n0\r\n\r\n", b"-5\r\n{}\r\n0\r\n\r\n", b"64\r\n{}", b"2\r\n{}XX0\r\n\r\n", b"\r\n\r\n"]


def raw_chunked(port: int, body: bytes) -> int | None:
    """Status of a chunked webhook with broken framing, or None when the server did not answer."""
    head = (
        f"POST /webhooks/datadog HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {harness.WEBHOOK_SECRET}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(head + body)
            connection.shutdown(socket.SHUT_WR)
            answer = connection.recv(64)
        return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else None
    except (OSError, ValueError, IndexError):
        return None


def run_requests(port: int, count: int) -> tuple[collections.Counter[str], list[str]]:
    # http.client sends header values as they are (requests refuses some it finds odd, such as a leading space).
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    statuses: collections.Counter[str] = collections.Counter()
    examples: list[str] = []  # the first requests that got a 5xx or no answer


    def send(case: hostile.Case) -> None:
        for attempt in (1, 2):
            try:
                connection.request(case.method, case.path, body=case.body, headers=case.headers)
                answer = connection.getresponse()
                answer.read()
            except (http.client.HTTPException, OSError) as exc:
                connection.close()
                if attempt == 1:
                    # The server may have closed a kept-alive connection as this request went out.
                    statuses["sent again on a new connection"] += 1
                    continue
                statuses["no answer"] += 1
                if len(examples) < 10:
                    examples.append(f"no answer ({type(exc).__name__}) {case!r}")
                return
            if answer.will_close:
                connection.close()
            statuses[str(answer.status)] += 1
            if answer.status >= 500 and len(examples) < 10:
                examples.append(f"{answer.status} {case!r}")
            return

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=hostile.cases(), chunks=st.sampled_from(BROKEN_CHUNKS), transport=st.integers(0, 19))
    def one(case: hostile.Case, chunks: bytes, transport: int) -> None:
        send(case)
        if transport == 0:
            status = raw_chunked(port, chunks)
            statuses[str(status) if status else "no answer"] += 1
            if (status is None or status >= 500) and len(examples) < 10:
                examples.append(f"{status or 'no answer'} chunked {chunks!r}")

    one()
    return statuses, examples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000, help="generated requests per store")
    parser.add_argument("--stores", default="sqlite,postgresql")
    harness.add_run_options(parser, postgres=True)
    args = parser.parse_args(argv)
    results = {}
    with harness.Run("fuzz-requests", args, argv) as run:
        for store in harness.listed(parser, "--stores", args.stores, ("sqlite", "postgresql")):
            server, _ = harness.caselink(f"web-{store}", run, store, **hostile.ENV, LOG_LEVEL="WARNING")
            started = time.monotonic()
            statuses, examples = run_requests(server.port, args.requests)
            results[store] = {
                "requests": sum(n for status, n in statuses.items() if not status.startswith("sent again")),
                "seconds": round(time.monotonic() - started, 1), "statuses": dict(sorted(statuses.items())),
                "5xx": sum(n for status, n in statuses.items() if status.startswith("5")),
                "no_answer": statuses["no answer"], "dropped_connections": statuses["sent again on a new connection"],
                "unhandled_errors_logged": server.process.logs(tail=10**9).count("unhandled error"),
                "examples": examples}
            print(f"{store}: {results[store]}", flush=True)
    print(f"5xx: {sum(result['5xx'] for result in results.values())}")
    run.write(results=results)
    failed = sum(r["5xx"] + r["no_answer"] + r["dropped_connections"] + r["unhandled_errors_logged"]
                 for r in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
