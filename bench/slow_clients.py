"""Slow clients: is caselink still answering while hundreds of connections trickle in a byte a second?

Each round: acks/s on a fresh caselink, then again with `--slow` connections trickling a request
(half in the head, half in the body) while probes ask /healthz and post a webhook on new connections.
Targets: probes' p99 at most 1 s; acks/s with the slow clients at least 0.8 of those without.

    python bench/slow_clients.py [--slow 200] [--rounds 3] [--duration 5]

See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import itertools
import sys
import threading
import time
from typing import Any

import harness
from harness import percentile

TARGET_P99_S, TARGET_RATIO, PROBE_TIMEOUT = 1.0, 0.8, 10.0


class SlowClients:
    """`count` connections trickling a request a byte a second, in an asyncio loop on its own thread."""

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count, self.open, self.reopened = port, count, 0, 0
        self.answers: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> SlowClients:
        self._thread.start()
        deadline = time.monotonic() + 30
        while self.open < self.count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    async def _run(self) -> None:
        await asyncio.gather(*(self._client(number % 2 == 0) for number in range(self.count)))

    async def _client(self, in_head: bool) -> None:
        head = b"POST /webhooks/datadog HTTP/1.1\r\nHost: x\r\n"
        if not in_head:
            head += b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        trickle = itertools.cycle(b"X-Slow: a\r\n" if in_head else b"{}")
        for attempt in itertools.count():
            if self._stop.is_set():
                return
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            self.open += 1
            self.reopened += attempt > 0
            try:
                writer.write(head)
                while not self._stop.is_set():
                    await writer.drain()
                    try:  # the status line the server sent (b"" when it closed), or nothing within a second
                        answer = await asyncio.wait_for(reader.readline(), 1.0)
                    except TimeoutError:
                        writer.write(bytes([next(trickle)]))
                        continue
                    key = answer.split(b" ", 2)[1].decode() if answer else "closed"
                    self.answers[key] = self.answers.get(key, 0) + 1
                    break
            except OSError:
                pass
            finally:
                self.open -= 1
                writer.close()


class Probes:
    """GET /healthz and an authenticated webhook, each on a new connection, every `interval` seconds."""

    def __init__(self, port: int, bodies: harness.Bodies, interval: float) -> None:
        self.port, self.bodies, self.interval = port, bodies, interval
        self.latencies: dict[str, list[float]] = {"healthz": [], "webhook": []}
        self.failures: dict[str, int] = {"healthz": 0, "webhook": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probes:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(PROBE_TIMEOUT * 2 + 5)

    def _run(self) -> None:
        for number in itertools.count(1):
            if self._stop.is_set():
                return
            self._probe("healthz", b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 200)
            self._probe("webhook", self.bodies.request(number, first_digit=2), 202)
            self._stop.wait(self.interval)

    def _probe(self, name: str, request: bytes, expected: int) -> None:
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=PROBE_TIMEOUT)
        try:
            connection.connect()
            connection.sock.sendall(request)
            response = http.client.HTTPResponse(connection.sock)
            response.begin()
            response.read()
            if response.status != expected:
                raise OSError(f"{name}: {response.status}")
            self.latencies[name].append(time.perf_counter() - started)
        except OSError:  # a probe with no answer within PROBE_TIMEOUT counts as PROBE_TIMEOUT
            self.failures[name] += 1
            self.latencies[name].append(PROBE_TIMEOUT)
        finally:
            connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=200, help="slow connections, half in the head, half in the body")
    parser.add_argument("--probe-interval", type=float, default=0.1)
    harness.add_load_options(parser, duration=5.0, warmup=1.0, rounds=3)
    harness.add_run_options(parser)
    args = parser.parse_args(argv)
    args.generator_used = harness.generator_used(parser, args.generator)
    rounds: list[dict[str, Any]] = []
    with harness.Run("slow", args, argv) as run:
        for number in range(1, args.rounds + 1):
            server, _ = harness.caselink(f"caselink-{number}", run, deployed=True)
            alone = harness.measure(server, args.generator_used, args, number, "without").rps
            probing = Probes(server.port, harness.Bodies(args.fixture, server.port), args.probe_interval)
            with SlowClients(server.port, args.slow) as slow, probing as probes:
                opened = slow.open
                loaded = harness.measure(server, args.generator_used, args, number, "with").rps
            run.stop(server)
            row: dict[str, Any] = {
                "round": number, "slow_connections_open": opened, "slow_connections_reopened": slow.reopened,
                "slow_connection_answers": slow.answers, "acks_per_s_without": alone, "acks_per_s_with": loaded,
                "ratio": round(loaded / alone, 3) if alone else None, "probe_failures": probes.failures}
            for name, values in probes.latencies.items():
                row.update({f"{name}_probes": len(values), f"{name}_p50_s": percentile(sorted(values), 50),
                            f"{name}_p99_s": percentile(sorted(values), 99)})
            rounds.append(row)
            print(f"round {number}: {opened} slow connections open; acks/s {alone:.0f} without, {loaded:.0f} with "
                  f"({row['ratio']}); /healthz p99 {_s(row['healthz_p99_s'])}, webhook p99 {_s(row['webhook_p99_s'])} "
                  f"({row['healthz_probes']} + {row['webhook_probes']} probes, failed {probes.failures}); "
                  f"slow connections answered {slow.answers}", flush=True)
    summary = {"ratio_median": harness.median(r["ratio"] for r in rounds),
               **{f"{name}_p99_s_worst": max(r[f"{name}_p99_s"] or PROBE_TIMEOUT for r in rounds)
                  for name in ("healthz", "webhook")}}
    met = (summary["ratio_median"] or 0) >= TARGET_RATIO and summary["healthz_p99_s_worst"] <= TARGET_P99_S \
        and summary["webhook_p99_s_worst"] <= TARGET_P99_S
    print(f"\nwith {args.slow} slow connections: throughput ratio {summary['ratio_median']} (median; target >= "
          f"{TARGET_RATIO}), worst p99 /healthz {_s(summary['healthz_p99_s_worst'])}, webhook "
          f"{_s(summary['webhook_p99_s_worst'])} (target <= {TARGET_P99_S:g} s): "
          + ("meets the targets" if met else "BELOW the targets"))
    run.write(generator=args.generator_used, summary=summary, rounds=rounds)
    return 0 if met else 1


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
