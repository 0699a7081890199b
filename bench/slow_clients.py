"""Slow clients: is caselink still answering while hundreds of connections trickle in a byte a second?

Each round starts caselink afresh (dry-run, a fresh SQLite file, the repo's gunicorn.conf.py, in the
deployed environment: PYTHONUNBUFFERED=1, its output read through a pipe),
measures webhook acknowledgements per second with the ack benchmark's generator, then opens
`--slow` connections that send a request a byte per second, half of them stuck in the head
(`POST /webhooks/datadog HTTP/1.1`, `Host: x`, then one header byte a second) and half in the
body (`Content-Length: 1000`, then one body byte a second); a connection the server closes is
opened again at once. With them open it probes `GET /healthz` and an authenticated webhook
(a new id each time) on new connections, every `--probe-interval` seconds, and measures the
acknowledgements per second again. Targets: probes answered in 1 s or less at p99, and
throughput with the slow clients at least 0.8 of that without them.

    python bench/slow_clients.py [--slow 200] [--rounds 3] [--duration 5]

See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import itertools
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import harness
from ack_throughput import Bodies
from ack_throughput import IdCounter
from ack_throughput import PythonGenerator
from ack_throughput import WrkGenerator
from ack_throughput import default_fixture

TARGET_P99_S = 1.0
TARGET_RATIO = 0.8
PROBE_TIMEOUT = 10.0


class SlowClients:
    """`count` connections trickling a request a byte a second, in an asyncio loop on its own thread."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.open = 0
        self.reopened = 0
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
        first = True
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            self.open += 1
            if not first:
                self.reopened += 1
            first = False
            try:
                writer.write(head)
                while not self._stop.is_set():
                    await writer.drain()
                    answer = await _answer_within(reader, 1.0)
                    if answer is not None:
                        key = answer.split(b" ", 2)[1].decode() if answer else "closed"
                        self.answers[key] = self.answers.get(key, 0) + 1
                        break
                    writer.write(bytes([next(trickle)]))
            except OSError:
                pass
            finally:
                self.open -= 1
                writer.close()


async def _answer_within(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """The status line the server sent (b"" when it closed), or None when it sent nothing in time."""
    try:
        return await asyncio.wait_for(reader.readline(), seconds)
    except TimeoutError:
        return None


class Probes:
    """GET /healthz and an authenticated webhook, each on a new connection, every `interval` seconds."""

    def __init__(self, port: int, bodies: Bodies, interval: float) -> None:
        self.port = port
        self.bodies = bodies
        self.interval = interval
        self.latencies: dict[str, list[float]] = {"healthz": [], "webhook": []}
        self.failures: dict[str, int] = {"healthz": 0, "webhook": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ids = itertools.count(1)

    def __enter__(self) -> Probes:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(PROBE_TIMEOUT * 2 + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._probe("healthz", b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 200)
            # 2 followed by 18 digits: never an id the generators send.
            request = self.bodies.request(0).replace(b"1" + b"0" * 18, b"2%018d" % next(self._ids), 1)
            self._probe("webhook", request, 202)
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
        except OSError:
            self.failures[name] += 1
            self.latencies[name].append(PROBE_TIMEOUT)
        finally:
            connection.close()


def measure(generator: Any, port: int, args: argparse.Namespace, process: Any) -> float:
    result = generator.run(port, args.warmup, args.duration, process.cpu_seconds)
    return result["requests"] / result["seconds"] if result["seconds"] else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=200, help="slow connections, half in the head, half in the body")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each on a freshly started caselink")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load measured, with and without")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=32, help="the load generator's keep-alive connections")
    parser.add_argument("--probe-interval", type=float, default=0.1)
    parser.add_argument("--generator", choices=("auto", "python", "wrk"), default="auto")
    parser.add_argument("--output", type=Path, help="JSON results file (default: bench/results/slow-<time>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (databases, server logs)")
    args = parser.parse_args(argv)
    use_wrk = args.generator == "wrk" or (args.generator == "auto" and shutil.which("wrk"))
    workdir = Path(tempfile.mkdtemp(prefix="caselink-slow-"))
    processes: list[harness.Process] = []
    rounds: list[dict[str, Any]] = []
    ids = IdCounter()
    with harness.terminate_on_sigterm(), harness.in_workdir(workdir, keep=args.keep), harness.cleanup(processes, None):
        for number in range(1, args.rounds + 1):
            env = harness.caselink_env(f"sqlite:///{workdir / f'round-{number}.db'}", None)
            harness.migrate(env)
            process, port = harness.web(f"caselink-{number}", env, workdir, deployed=True)
            processes.append(process)
            bodies = Bodies(default_fixture(), port)
            if use_wrk:
                generator: Any = WrkGenerator(args.connections, 2, bodies, workdir)
            else:
                generator = PythonGenerator(args.connections, bodies, ids)
            alone = measure(generator, port, args, process)
            with SlowClients(port, args.slow) as slow, Probes(port, bodies, args.probe_interval) as probes:
                opened = slow.open
                loaded = measure(generator, port, args, process)
            row = {
                "round": number,
                "slow_connections_open": opened,
                "slow_connections_reopened": slow.reopened,
                "slow_connection_answers": slow.answers,
                "acks_per_s_without": round(alone, 1),
                "acks_per_s_with": round(loaded, 1),
                "ratio": round(loaded / alone, 3) if alone else None,
                "probe_failures": probes.failures,
            }
            for name, values in probes.latencies.items():
                ordered = sorted(values)
                row[f"{name}_probes"] = len(ordered)
                row[f"{name}_p50_s"] = harness.percentile(ordered, 50)
                row[f"{name}_p99_s"] = harness.percentile(ordered, 99)
            rounds.append(row)
            print(
                f"round {number}: {opened} slow connections open; acks/s {alone:.0f} without, {loaded:.0f} with "
                f"({row['ratio']}); /healthz p99 {_s(row['healthz_p99_s'])}, webhook p99 {_s(row['webhook_p99_s'])} "
                f"({row['healthz_probes']} + {row['webhook_probes']} probes, failed {probes.failures}); "
                f"slow connections answered {slow.answers}",
                flush=True,
            )
            process.stop()
            processes.remove(process)
    summary = {
        "ratio_median": harness.median([r["ratio"] for r in rounds]),
        "healthz_p99_s_worst": max(r["healthz_p99_s"] or PROBE_TIMEOUT for r in rounds),
        "webhook_p99_s_worst": max(r["webhook_p99_s"] or PROBE_TIMEOUT for r in rounds),
    }
    met = (
        summary["ratio_median"] is not None
        and summary["ratio_median"] >= TARGET_RATIO
        and summary["healthz_p99_s_worst"] <= TARGET_P99_S
        and summary["webhook_p99_s_worst"] <= TARGET_P99_S
    )
    print(
        f"\nwith {args.slow} slow connections: throughput ratio {summary['ratio_median']} (median; target >= "
        f"{TARGET_RATIO}), worst p99 /healthz {_s(summary['healthz_p99_s_worst'])}, webhook "
        f"{_s(summary['webhook_p99_s_worst'])} (target <= {TARGET_P99_S:g} s): "
        + ("meets the targets" if met else "BELOW the targets")
    )
    document = {
        "benchmark": "slow clients: probes and acks/s with slow connections open",
        "machine": harness.machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "output"},
        "generator": "wrk" if use_wrk else "python",
        "summary": summary,
        "rounds": rounds,
    }
    print(f"results: {harness.shown(harness.write_results('slow', document, args.output))}")
    return 0 if met else 1


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
