"""Webhook acknowledgements per second: caselink under gunicorn next to a bare Flask endpoint.

Starts, in one run and with the same gunicorn settings (gunicorn.conf.py's worker class,
workers and threads), a bare Flask app that answers 202 (bench/bare_app.py) and caselink
itself, in dry-run (no Datadog keys) and live against the fake Datadog of
tests/fake_datadog.py on loopback, so the in-process delivery worker runs as in
production. Each target is driven by 32 keep-alive connections posting the Datadog
incident fixture with a different `id` on every request (every one a new event), warmed
up, then measured for a fixed time; the targets take turns over several rounds to spread
the machine's noise. All of it runs once per environment: as deployed (PYTHONUNBUFFERED=1,
output read through a pipe by another process) and plain. Prints requests/s (median of the
rounds), p50/p99 latency, errors (answers other than 202), how many connections each gunicorn
worker held in every round, and the throughput ratio caselink / bare (target: at least 0.85
at the median, no round below 0.7), checks that caselink stored one event per 202, and writes
everything to bench/results/.

    python bench/ack_throughput.py [--duration 10] [--rounds 3] [--environments deployed,plain]
    python bench/ack_throughput.py --new-connections --targets bare,dry-run,gthread  # a connection per request

See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import resource
import runpy
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import servers  # noqa: E402 - the tests' processes and clean environments
from tests.servers import base_env  # noqa: E402
from tests.servers import flask  # noqa: E402
from tests.servers import free_port  # noqa: E402

RESULTS = BENCH / "results"
WEBHOOK_SECRET = "bench-webhook-secret"
ADMIN_TOKEN = "bench-admin-token"
FAKE_API_KEY = "fake-api-key"  # what tests/fake_datadog.py accepts
FAKE_APP_KEY = "fake-application-key"
TARGET_RATIO = 0.85
# No single round's ratio may fall below this.
TARGET_ROUND_RATIO = 0.7
ID_PLACEHOLDER = b"@@ID@@"
ALL_TARGETS = ("bare", "dry-run", "live")
# Also on request: caselink dry-run served by gunicorn's own gthread worker, to set caselink's worker class against.
TARGET_CHOICES = (*ALL_TARGETS, "gthread")
# A round in which one gunicorn worker held this share of the connections or more is lopsided.
LOPSIDED_SHARE = 0.75
LABELS = {
    "bare": "bare Flask 202",
    "dry-run": "caselink dry-run",
    "live": "caselink live",
    "gthread": "dry-run, gthread",
}
# The environments every target runs in, the deployed one first: what a PaaS or a container image gives
# a web process (Heroku's Python buildpack and most Python images set PYTHONUNBUFFERED; a log router
# reads stdout through a pipe), and the same without PYTHONUNBUFFERED, its output going to a file.
ENVIRONMENTS = {
    "deployed": "PYTHONUNBUFFERED=1, stdout a pipe drained by another process",
    "plain": "no PYTHONUNBUFFERED, stdout a file",
}
# gunicorn settings that legitimately differ between the two configurations.
CONFIG_NAMES_ALLOWED_TO_DIFFER = {"bind", "config", "default_proc_name", "check_config", "print_config"}


def default_fixture() -> Path:
    shared = ROOT.parent / "shared" / "fixtures" / "datadog" / "incident-created.json"
    return shared if shared.exists() else ROOT / "tests" / "fixtures" / "datadog" / "incident-created.json"


# -- request bodies -------------------------------------------------------------


class Bodies:
    """The fixture with a slot for `id`, built once; every request gets the next unique 19-digit id.

    The id has a fixed width, so Content-Length never changes and a request is the
    pre-built head and body with the id bytes spliced in: no JSON is built while measuring.
    """

    def __init__(self, fixture: Path, port: int, new_connections: bool = False) -> None:
        raw = fixture.read_bytes()
        payload = json.loads(raw)
        if not isinstance(payload, dict):
            raise SystemExit(f"{fixture}: the fixture must be a JSON object")
        original = payload.get("id")
        quoted = json.dumps(original).encode() if isinstance(original, str) else b""
        if quoted and raw.count(quoted) == 1:
            template = raw.replace(quoted, b'"' + ID_PLACEHOLDER + b'"')
        else:
            payload["id"] = ID_PLACEHOLDER.decode()
            template = json.dumps(payload).encode()
        self.template = template
        self.width = 19
        before, after = template.split(ID_PLACEHOLDER)
        head = (
            "POST /webhooks/datadog HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {WEBHOOK_SECRET}\r\n"
            "Content-Type: application/json\r\n"
            + ("Connection: close\r\n" if new_connections else "")
            + f"Content-Length: {len(before) + self.width + len(after)}\r\n"
            "\r\n"
        ).encode()
        self.prefix = head + before
        self.suffix = after
        self.new_connections = new_connections

    def request(self, number: int) -> bytes:
        # Python-generated ids start with 1, wrk's with 9: never the same id twice in a run.
        return self.prefix + b"1%018d" % number + self.suffix


class IdCounter:
    def __init__(self) -> None:
        self.value = 0

    def next(self) -> int:
        self.value += 1
        return self.value


# -- measurements ---------------------------------------------------------------


@dataclass
class Measurement:
    """One target, one round: the measured window, plus totals over warm-up and drain for the store check."""

    target: str
    round: int
    generator: str
    seconds: float
    requests: int
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    statuses: dict[str, int]
    socket_errors: int
    accepted_total: int
    unanswered: int
    generator_cpu_seconds: float | None
    server_cpu_seconds: float | None
    loadavg_before: list[float] = field(default_factory=list)
    # Established connections each gunicorn worker held halfway through the window, fewest first.
    connections_per_worker: list[int] = field(default_factory=list)
    environment: str = "deployed"

    @classmethod
    def from_run(
        cls,
        target: str,
        round_number: int,
        generator: str,
        result: dict[str, Any],
        loadavg: list[float],
        connections_per_worker: list[int] | None = None,
        environment: str = "deployed",
    ) -> Measurement:
        """What a generator's `run` returned, as one measurement."""
        statuses = result["statuses"]
        server_cpu = result["server_cpu_seconds"]
        return cls(
            target=target,
            round=round_number,
            generator=generator,
            seconds=round(result["seconds"], 3),
            requests=result["requests"],
            rps=round(result["requests"] / result["seconds"], 1) if result["seconds"] else 0.0,
            p50_ms=result["p50_ms"],
            p99_ms=result["p99_ms"],
            errors=sum(count for status, count in statuses.items() if status != "202") + result["socket_errors"],
            statuses=statuses,
            socket_errors=result["socket_errors"],
            accepted_total=result["accepted_total"],
            unanswered=result["unanswered"],
            generator_cpu_seconds=round(result["generator_cpu_seconds"], 3),
            server_cpu_seconds=None if server_cpu is None else round(server_cpu, 3),
            loadavg_before=loadavg,
            connections_per_worker=connections_per_worker or [],
            environment=environment,
        )

    @property
    def lopsided(self) -> bool:
        """One worker held LOPSIDED_SHARE or more of the connections (see `Process.connections_per_worker`)."""
        split = self.connections_per_worker
        return len(split) > 1 and sum(split) > 0 and max(split) >= LOPSIDED_SHARE * sum(split)

    @property
    def server_cpu_ms_per_request(self) -> float | None:
        if self.server_cpu_seconds is None or not self.requests:
            return None
        return self.server_cpu_seconds * 1000 / self.requests

    @property
    def generator_cpu_share(self) -> float | None:
        if self.generator_cpu_seconds is None or not self.seconds:
            return None
        return self.generator_cpu_seconds / self.seconds


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(math.ceil(q / 100 * len(sorted_values)), 1)
    return sorted_values[rank - 1]


# -- the Python load generator --------------------------------------------------


class _Connection(asyncio.Protocol):
    """One keep-alive connection with one request in flight at a time."""

    def __init__(self, run: _PythonRun) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sent_at = 0.0
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        run = self.run
        if run.stopping or self.transport is None:
            run.idle(self)
            return
        self.busy = True
        self.sent_at = time.perf_counter()
        self.transport.write(run.bodies.request(run.ids.next()))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end]).lower()
        start = head.find(b"\r\ncontent-length:")
        if start >= 0:
            stop = head.find(b"\r\n", start + 2)
            length = int(head[start + 17 : stop if stop >= 0 else len(head)])
            total = end + 4 + length
        elif b"transfer-encoding: chunked" in head:
            last = buffer.find(b"\r\n0\r\n\r\n", end)
            if last < 0:
                return
            total = last + 7
        else:
            total = end + 4
        if len(buffer) < total:
            return
        del buffer[:total]
        self.busy = False
        status = int(head[9:12])
        self.run.answered(status, time.perf_counter() - self.sent_at)
        if b"\r\nconnection: close" in head:
            self.transport.close()  # type: ignore[union-attr]
            self.transport = None
            self.run.reconnect()
            return
        self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.busy:
            self.busy = False
            self.run.failed()
            self.run.reconnect()
        self.transport = None
        self.run.idle(self)


class _PythonRun:
    def __init__(self, port: int, connections: int, bodies: Bodies, ids: IdCounter) -> None:
        self.port = port
        self.connections = connections
        self.bodies = bodies
        self.ids = ids
        self.loop = asyncio.get_running_loop()
        self.phase = "warmup"
        self.stopping = False
        self.latencies: list[float] = []
        self.statuses: dict[str, int] = {}
        self.socket_errors = 0
        self.accepted_total = 0
        self.open: set[_Connection] = set()
        self.every: list[_Connection] = []
        self.all_idle = asyncio.Event()

    def answered(self, status: int, latency: float) -> None:
        if status == 202:
            self.accepted_total += 1
        if self.phase == "measure":
            self.latencies.append(latency)
            key = str(status)
            self.statuses[key] = self.statuses.get(key, 0) + 1

    def failed(self) -> None:
        if self.phase == "measure":
            self.socket_errors += 1

    def reconnect(self) -> None:
        if not self.stopping:
            self.loop.create_task(self.connect())

    def idle(self, connection: _Connection) -> None:
        self.open.discard(connection)
        if self.stopping and not any(c.busy for c in self.open):
            self.all_idle.set()

    async def connect(self) -> None:
        connection = _Connection(self)
        self.open.add(connection)
        self.every.append(connection)
        try:
            await self.loop.create_connection(lambda: connection, "127.0.0.1", self.port)
        except OSError:
            self.open.discard(connection)
            self.failed()
            await asyncio.sleep(0.05)
            self.reconnect()


class PythonGenerator:
    """asyncio protocols on raw sockets with pre-built requests, in this process (one core at most)."""

    name = "python"

    def __init__(self, connections: int, bodies: Bodies, ids: IdCounter) -> None:
        self.connections = connections
        self.bodies = bodies
        self.ids = ids

    def describe(self) -> str:
        kind = "connections, a new one per request" if self.bodies.new_connections else "keep-alive connections"
        return f"python (asyncio raw-socket protocol, {self.connections} {kind}, in this process)"

    def run(self, port: int, warmup: float, duration: float, probe: Callable[[], float | None]) -> dict[str, Any]:
        return asyncio.run(self._run(port, warmup, duration, probe))

    async def _run(
        self, port: int, warmup: float, duration: float, probe: Callable[[], float | None]
    ) -> dict[str, Any]:
        run = _PythonRun(port, self.connections, self.bodies, self.ids)
        for _ in range(self.connections):
            await run.connect()
        await asyncio.sleep(warmup)
        server_start = probe()
        run.phase = "measure"
        cpu_start, started = time.process_time(), time.perf_counter()
        await asyncio.sleep(duration)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_start
        run.phase = "drain"
        server_end = probe()
        run.stopping = True
        if not any(c.busy for c in run.open):
            run.all_idle.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.all_idle.wait(), 30)
        unanswered = sum(1 for c in run.open if c.busy)
        for connection in run.every:
            if connection.transport is not None:
                connection.transport.close()
        await asyncio.sleep(0.05)
        run.latencies.sort()
        return {
            "seconds": seconds,
            "requests": len(run.latencies),
            "p50_ms": _ms(percentile(run.latencies, 50)),
            "p99_ms": _ms(percentile(run.latencies, 99)),
            "statuses": run.statuses,
            "socket_errors": run.socket_errors,
            "accepted_total": run.accepted_total,
            "unanswered": unanswered,
            "generator_cpu_seconds": cpu,
            "server_cpu_seconds": _difference(server_start, server_end),
        }


def _difference(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else end - start


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


# -- wrk ------------------------------------------------------------------------


# Each wrk run's ids start with its own number, counted across every generator of the process, so
# two generators loading one server (a harness that imports this module may make them) never send
# the same ids: repeats are answered 200 at a fraction of a new event's cost and flatter the figures.
_WRK_RUNS = itertools.count(1)


class WrkGenerator:
    """wrk with bench/wrk_ack.lua: one wrk run to warm up, one to measure."""

    name = "wrk"

    def __init__(self, connections: int, threads: int, bodies: Bodies, workdir: Path) -> None:
        self.connections = connections
        self.threads = threads
        self.body_file = workdir / "body-template.json"
        self.body_file.write_bytes(bodies.template)

    def describe(self) -> str:
        return f"wrk ({self.threads} threads, {self.connections} keep-alive connections, bench/wrk_ack.lua)"

    def _wrk(self, port: int, seconds: float) -> tuple[dict[str, Any], float]:
        """Run wrk once; return what wrk_ack.lua printed and wrk's CPU seconds."""
        command = [
            "wrk",
            f"-t{self.threads}",
            f"-c{self.connections}",
            f"-d{max(round(seconds), 1)}s",
            "--timeout",
            "30s",
            "-s",
            str(BENCH / "wrk_ack.lua"),
            f"http://127.0.0.1:{port}/webhooks/datadog",
            "--",
            str(self.body_file),
            WEBHOOK_SECRET,
            f"9{next(_WRK_RUNS):05d}",
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, check=False)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        line = next((x for x in result.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
        if result.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return json.loads(line.removeprefix("BENCH_JSON ")), cpu

    def run(self, port: int, warmup: float, duration: float, probe: Callable[[], float | None]) -> dict[str, Any]:
        warm, _ = self._wrk(port, warmup)
        server_start = probe()
        measured, cpu = self._wrk(port, duration)
        server_end = probe()
        seconds = measured["duration_us"] / 1e6
        statuses = {"202": measured["accepted"]}
        if measured["rejected"]:
            statuses["other"] = measured["rejected"]
        return {
            "seconds": seconds,
            "requests": measured["requests"],
            "p50_ms": round(measured["p50_us"] / 1000, 3),
            "p99_ms": round(measured["p99_us"] / 1000, 3),
            "statuses": statuses,
            "socket_errors": sum(measured[k] for k in ("connect", "read", "write", "timeout")),
            "accepted_total": warm["accepted"] + measured["accepted"],
            # wrk drops the answers still in flight when its time is up: up to one per connection per wrk run.
            "unanswered": 2 * self.connections,
            "generator_cpu_seconds": cpu,
            # wrk's start and exit fall inside this window too: a slight overestimate.
            "server_cpu_seconds": _difference(server_start, server_end),
        }


# -- processes ------------------------------------------------------------------


class Process(servers.Process):
    """A server the benchmark starts: the tests' process, plus readiness by URL and CPU time.

    `drained`: its stdout and stderr go into a pipe that another process (`cat`) reads into the
    log file, as a PaaS log router reads a dyno's output, instead of straight into the file.
    """

    def __init__(
        self, name: str, command: list[str], env: dict[str, str], log_dir: Path, drained: bool = False
    ) -> None:
        super().__init__(name, command, env, log_dir)
        self.drained = drained
        self.drain: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if not self.drained:
            super().start()
            return
        with self.log_path.open("ab") as log:
            self.drain = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=log, start_new_session=True)
        assert self.drain.stdin is not None
        self.popen = subprocess.Popen(
            self.command,
            cwd=servers.ROOT,
            env=self.env,
            stdout=self.drain.stdin,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.drain.stdin.close()

    def stop(self, timeout: float = 30) -> int | None:
        code = super().stop(timeout)
        if self.drain is not None:
            try:
                self.drain.wait(10)
            except subprocess.TimeoutExpired:
                self.drain.kill()
                self.drain.wait(5)
        return code

    def logs(self, tail: int = 4000) -> str:
        return super().logs()[-tail:]

    def wait_until_up(self, url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"{self.name} exited:\n{self.logs()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not come up in {timeout:g}s:\n{self.logs()}")

    def cpu_seconds(self) -> float | None:
        """CPU time of the process and its children (gunicorn's master and workers), from /proc."""
        try:
            tick = os.sysconf("SC_CLK_TCK")
            family = [(self.popen.pid, self._stat(self.popen.pid))] if self.popen else []
            family += list(self._children())
            if not family:
                return None
            return sum(int(fields[11]) + int(fields[12]) for _, fields in family if fields) / tick
        except (OSError, ValueError):
            return None

    def connections_per_worker(self, port: int) -> list[int]:
        """Established TCP connections to `port` that each child process (gunicorn worker) holds.

        gunicorn's workers accept from one shared socket, and whichever wakes first takes the
        connection: when a load generator opens all its connections at once, one worker can
        end up with nearly all of them while the other idles. That moves a round's throughput
        far more than anything the app does, for the bare endpoint as for caselink.
        """
        try:
            established = set()
            for table in ("/proc/net/tcp", "/proc/net/tcp6"):
                with contextlib.suppress(OSError):
                    for line in Path(table).read_text().splitlines()[1:]:
                        fields = line.split()
                        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                            established.add(fields[9])
            split = []
            for pid, _ in self._children():
                try:
                    links = (os.readlink(fd.path) for fd in os.scandir(f"/proc/{pid}/fd"))
                    inodes = {link[8:-1] for link in links if link.startswith("socket:[")}
                except OSError:
                    continue
                split.append(len(inodes & established))
            return sorted(split)
        except (OSError, ValueError, IndexError):
            return []

    def _children(self) -> Iterator[tuple[int, list[str]]]:
        """(pid, /proc stat fields after the name) of each running child process."""
        if self.popen is None:
            return
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                fields = self._stat(int(entry.name))
                if fields and int(fields[1]) == self.popen.pid:
                    yield int(entry.name), fields

    @staticmethod
    def _stat(pid: int) -> list[str]:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return []  # gone meanwhile
        return stat[stat.rfind(")") + 2 :].split()


@dataclass
class Target:
    key: str
    process: Process
    port: int
    database: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, environment: str = "deployed") -> None:
        self.args = args
        self.workdir = workdir
        self.environment = environment
        self.processes: list[Process] = []
        self.targets: dict[str, Target] = {}
        self.fake: Process | None = None
        self.fake_url: str | None = None
        self.gunicorn_env = {"WEB_CONCURRENCY": str(args.workers), "GUNICORN_THREADS": str(args.threads)}
        if args.gunicorn_args:
            # gunicorn reads these after its configuration file, for every target alike.
            self.gunicorn_env["GUNICORN_CMD_ARGS"] = args.gunicorn_args
        if environment == "deployed":
            self.gunicorn_env["PYTHONUNBUFFERED"] = "1"

    @property
    def drained(self) -> bool:
        return self.environment == "deployed"

    # -- starting things ------------------------------------------------------

    def gunicorn_command(self, port: int, *config: str) -> list[str]:
        # The configuration binds 0.0.0.0:$PORT; the benchmark stays on loopback, same for every target.
        return [sys.executable, "-m", "gunicorn", *config, "--bind", f"127.0.0.1:{port}"]

    def caselink_env(self, key: str, port: int) -> tuple[dict[str, str], Path]:
        database = self.workdir / f"{key}.db"
        settings: dict[str, Any] = {
            "PORT": port,
            "DATABASE_URL": f"sqlite:///{database}",
            "DATADOG_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "RULES_FILE": ROOT / "rules.yaml",
            **self.gunicorn_env,
        }
        if key == "live":
            settings.update(DD_API_KEY=FAKE_API_KEY, DD_APP_KEY=FAKE_APP_KEY, DD_API_URL=self.start_fake())
        return base_env(**settings), database

    def start_fake(self) -> str:
        if self.fake_url is None:
            port = free_port()
            fake = Process(
                "fake-datadog", [sys.executable, "tests/fake_datadog.py", "--port", str(port)], base_env(), self.workdir
            )
            self.processes.append(fake)
            fake.start()
            self.fake_url = f"http://127.0.0.1:{port}"
            fake.wait_until_up(self.fake_url + "/_fake/state")
            self.fake = fake
        return self.fake_url

    def restart(self, key: str) -> None:
        """Stop a target's server and start a fresh one in its place: the same command, environment,
        port and database (already migrated), so its load generator carries on as it was."""
        target = self.targets[key]
        target.process.stop()
        self.processes.remove(target.process)
        process = Process(key, target.process.command, target.process.env, self.workdir, self.drained)
        self.processes.append(process)
        process.start()
        process.wait_until_up(target.url + "/healthz")
        target.process = process

    def start(self, key: str) -> Target:
        port = free_port()
        if key == "bare":
            env = base_env(PORT=port, **self.gunicorn_env)
            command = self.gunicorn_command(port, "-c", "bench/gunicorn_bare_conf.py", "bench.bare_app:app")
            database = None
        else:
            env, database = self.caselink_env(key, port)
            migrate = flask(env, "db", "upgrade", timeout=120)
            if migrate.returncode != 0:
                raise RuntimeError(f"db upgrade failed for {key}:\n{migrate.stdout}\n{migrate.stderr}")
            # The gthread target: caselink as configured, but for gunicorn's own worker class.
            stock = ("--worker-class", "gthread") if key == "gthread" else ()
            command = self.gunicorn_command(port, *stock, "app:app")
        process = Process(key, command, env, self.workdir, self.drained)
        self.processes.append(process)
        process.start()
        target = Target(key, process, port, database)
        process.wait_until_up(target.url + "/healthz")
        self.targets[key] = target
        return target

    def check_same_gunicorn_settings(self) -> dict[str, Any]:
        """Ask gunicorn for both resolved configurations and refuse to compare apples with pears."""
        port = free_port()
        env, _ = self.caselink_env("config-check", port)
        configs = {}
        for key, command in (
            ("caselink", self.gunicorn_command(port, "app:app")),
            ("bare", self.gunicorn_command(port, "-c", "bench/gunicorn_bare_conf.py", "bench.bare_app:app")),
        ):
            result = subprocess.run(
                [*command, "--print-config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
            )
            if result.returncode != 0:
                raise RuntimeError(f"gunicorn --print-config failed for {key}:\n{result.stdout}\n{result.stderr}")
            configs[key] = dict(
                (name.strip(), value.strip())
                for name, _, value in (line.partition("=") for line in result.stdout.splitlines())
                if name.strip()
            )
        differ = [
            name
            for name in sorted(set(configs["caselink"]) | set(configs["bare"]))
            if configs["caselink"].get(name) != configs["bare"].get(name)
            and name not in CONFIG_NAMES_ALLOWED_TO_DIFFER
            and not (
                configs["caselink"].get(name, "<").startswith("<") and configs["bare"].get(name, "<").startswith("<")
            )
        ]
        if differ:
            details = ", ".join(f"{n}: {configs['caselink'].get(n)} vs {configs['bare'].get(n)}" for n in differ)
            raise RuntimeError(f"the bare app would not run with caselink's gunicorn settings: {details}")
        names = (
            "worker_class",
            "workers",
            "threads",
            "keepalive",
            "worker_connections",
            "backlog",
            "timeout",
            "reuse_port",
        )
        return {name: configs["caselink"].get(name) for name in names}

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    # -- measuring --------------------------------------------------------------

    def measure(self, generator: Any, target: Target, round_number: int) -> Measurement:
        loadavg = list(os.getloadavg()) if hasattr(os, "getloadavg") else []
        split: list[int] = []
        # Halfway through the measured window, by the clock (warm-up, then half the window).
        halfway = threading.Timer(
            self.args.warmup + self.args.duration / 2,
            lambda: split.extend(target.process.connections_per_worker(target.port)),
        )
        halfway.start()
        try:
            result = generator.run(target.port, self.args.warmup, self.args.duration, target.process.cpu_seconds)
        finally:
            halfway.cancel()
            halfway.join()
        if not target.process.running:
            raise RuntimeError(f"{target.key} died during the run:\n{target.process.logs()}")
        return Measurement.from_run(target.key, round_number, generator.name, result, loadavg, split, self.environment)

    def store_check(self, target: Target, accepted: int, unanswered: int) -> dict[str, Any]:
        """Events stored (in the SQLite file and as GET /api/events sees them) against 202s received."""
        assert target.database is not None
        # Wait until the server has finished what it was sent (wrk leaves requests in flight) and,
        # live, until the delivery worker has nothing pending; 30 s at most.
        deadline = time.monotonic() + 30
        previous = -1
        while True:
            with contextlib.closing(sqlite3.connect(target.database, timeout=30)) as db:
                stored = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
                links = dict(db.execute("SELECT state, COUNT(*) FROM links GROUP BY state").fetchall())
            settled = stored == previous and not (links.get("pending") or links.get("claimed"))
            if settled or time.monotonic() >= deadline:
                break
            previous = stored
            time.sleep(0.5)
        request = urllib.request.Request(
            target.url + "/api/events?limit=1", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            newest = json.load(answer)["events"]
        check: dict[str, Any] = {
            "events_stored": stored,
            "answers_202": accepted,
            "newest_event_id_via_api": newest[0]["id"] if newest else None,
            "links_by_state": links,
        }
        if self.args.generator_used == "wrk":
            # wrk never reads the answers in flight at its cut-off, so a few 202s go uncounted.
            check["ok"] = accepted <= stored <= accepted + unanswered
            check["rule"] = f"202s <= stored <= 202s + {unanswered} (answers wrk dropped at its cut-offs)"
        else:
            check["ok"] = stored == accepted
            check["rule"] = "stored == 202s"
        if target.key == "live" and self.fake_url is not None:
            with urllib.request.urlopen(self.fake_url + "/_fake/state", timeout=10) as answer:
                state = json.load(answer)
            check["fake_datadog_link_creations"] = state["creations"]
            check["fake_datadog_requests"] = state["requests"]
        return check


# -- reporting ------------------------------------------------------------------


def summarise(measurements: list[Measurement], targets: list[str]) -> dict[str, Any]:
    """Per target: medians over the rounds, and the ratios to the bare app."""
    summary: dict[str, Any] = {}
    for key in targets:
        rows = [m for m in measurements if m.target == key]
        if not rows:
            continue

        def median(values: list[float | None]) -> float | None:
            present = [v for v in values if v is not None]
            return round(statistics.median(present), 3) if present else None

        summary[key] = {
            "rps_median": median([m.rps for m in rows]),
            "rps_rounds": [m.rps for m in rows],
            "p50_ms_median": median([m.p50_ms for m in rows]),
            "p99_ms_median": median([m.p99_ms for m in rows]),
            "errors": sum(m.errors for m in rows),
            "requests_measured": sum(m.requests for m in rows),
            "server_cpu_ms_per_request_median": median([m.server_cpu_ms_per_request for m in rows]),
            "generator_cpu_share_median": median([m.generator_cpu_share for m in rows]),
            "lopsided_rounds": sum(1 for m in rows if m.lopsided),
        }
    bare = summary.get("bare", {})
    for key, values in summary.items():
        if key == "bare" or not bare.get("rps_median"):
            continue
        values["ratio_to_bare"] = round(values["rps_median"] / bare["rps_median"], 3)
        # The same ratio within each round, where the two ran seconds apart: less exposed to slow drifts.
        pairs = [
            (m, b)
            for m in measurements
            if m.target == key
            for b in measurements
            if b.target == "bare" and b.round == m.round and b.rps
        ]
        values["ratio_rounds"] = [round(m.rps / b.rps, 3) for m, b in pairs]
        values["ratio_of_rounds_median"] = round(statistics.median(values["ratio_rounds"]), 3) if pairs else None
        # The same, only over rounds in which neither target had one worker holding most connections.
        balanced = [m.rps / b.rps for m, b in pairs if not m.lopsided and not b.lopsided]
        values["ratio_balanced_rounds"] = [round(ratio, 3) for ratio in balanced]
        values["ratio_balanced_rounds_median"] = round(statistics.median(balanced), 3) if balanced else None
        # Server CPU per request, bare over caselink: the ratio to expect when the CPUs are the limit,
        # and the figure least moved by other load on the machine.
        own, base = values["server_cpu_ms_per_request_median"], bare.get("server_cpu_ms_per_request_median")
        values["cpu_ratio_to_bare"] = round(base / own, 3) if own and base else None
    stock = summary.get("gthread", {})
    if stock.get("rps_median") and summary.get("dry-run", {}).get("rps_median"):
        ours = summary["dry-run"]
        ours["ratio_to_gthread"] = round(ours["rps_median"] / stock["rps_median"], 3)
        ours["ratio_to_gthread_rounds"] = [
            round(m.rps / g.rps, 3)
            for m in measurements
            if m.target == "dry-run"
            for g in measurements
            if g.target == "gthread" and g.round == m.round and g.rps
        ]
    return summary


def generator_ceiling(measurements: list[Measurement]) -> float | None:
    """Requests per CPU-second the generator spent against the bare app: what it could drive on one core."""
    rows = [m for m in measurements if m.target == "bare" and m.generator_cpu_seconds]
    if not rows:
        return None
    return round(statistics.median(m.requests / m.generator_cpu_seconds for m in rows), 0)


def print_report(
    summary: dict[str, Any], measurements: list[Measurement], checks: dict[str, Any], ceiling: float | None
) -> None:
    def show(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    print()
    header = f"{'target':<18}{'req/s':>9}  {'rounds':<24}{'p50 ms':>8}{'p99 ms':>9}{'errors':>8}"
    header += f"{'server CPU':>12}{'gen CPU':>9}"
    print(header)
    print(f"{'':<18}{'(median)':>9}  {'':<24}{'':>8}{'':>9}{'':>8}{'ms/req':>12}{'share':>9}")
    for key, values in summary.items():
        rounds = "/".join(f"{v:.0f}" for v in values["rps_rounds"])
        print(
            f"{LABELS[key]:<18}{values['rps_median']:>9.0f}  {rounds:<24}"
            f"{show(values['p50_ms_median'], '.2f'):>8}{show(values['p99_ms_median'], '.2f'):>9}"
            f"{values['errors']:>8}"
            f"{show(values['server_cpu_ms_per_request_median'], '.3f'):>12}"
            f"{show(values['generator_cpu_share_median'], '.0%'):>9}"
        )
    print()
    for key, values in summary.items():
        if "ratio_to_bare" in values:
            verdict = "meets the target" if values["ratio_to_bare"] >= TARGET_RATIO else "BELOW the target"
            print(
                f"ratio {LABELS[key]} / bare (req/s medians): {values['ratio_to_bare']:.2f}  "
                f"({verdict} of {TARGET_RATIO}); per round: "
                + ", ".join(f"{r:.2f}" for r in values["ratio_rounds"])
                + f" (their median {show(values['ratio_of_rounds_median'], '.2f')})"
                + f"; server CPU per request, bare / {key}: {show(values['cpu_ratio_to_bare'], '.2f')}"
            )
        if "ratio_to_gthread" in values:
            print(
                f"ratio caselink's worker / stock gthread, dry-run (req/s medians): {values['ratio_to_gthread']:.2f}; "
                "per round: " + ", ".join(f"{r:.2f}" for r in values["ratio_to_gthread_rounds"])
            )
    lopsided = {key: values["lopsided_rounds"] for key, values in summary.items() if values["lopsided_rounds"]}
    if lopsided:
        print(
            f"rounds in which one gunicorn worker held {LOPSIDED_SHARE:.0%} or more of the connections: "
            + ", ".join(f"{LABELS[key]} {count}" for key, count in lopsided.items())
            + " (whichever worker was running took them: see bench/README.md)"
        )
        for key, values in summary.items():
            if values.get("ratio_balanced_rounds_median") is not None:
                print(
                    f"  ratio {LABELS[key]} / bare over the rounds where neither was lopsided: "
                    f"{values['ratio_balanced_rounds_median']:.2f} "
                    f"({len(values['ratio_balanced_rounds'])} rounds)"
                )
    if ceiling is not None:
        bare = summary.get("bare", {}).get("rps_median")
        print(
            f"generator ceiling: ~{ceiling:.0f} req/s per CPU-second it gets "
            f"(requests / its own CPU time against the bare app, which it drove at {bare:.0f} req/s)"
        )
    for key, check in checks.items():
        mark = "ok" if check["ok"] else "MISMATCH"
        line = (
            f"store check {LABELS[key]}: {check['events_stored']} events stored, {check['answers_202']} answers 202 "
            f"[{check['rule']}: {mark}]; newest id via /api/events {check['newest_event_id_via_api']}; "
            f"links {check['links_by_state']}"
        )
        if "fake_datadog_link_creations" in check:
            line += f"; fake Datadog got {check['fake_datadog_link_creations']} link creation(s)"
        print(line)


# -- main -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per target and round")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measurement")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the targets take turns in each")
    parser.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections")
    parser.add_argument(
        "--new-connections",
        action="store_true",
        help="every request on a new connection (Connection: close), as a sender without keep-alive does; "
        "uses the python generator",
    )
    parser.add_argument(
        "--environments",
        default=",".join(ENVIRONMENTS),
        help="comma-separated, run in this order: deployed (PYTHONUNBUFFERED=1, output through a pipe), "
        "plain (neither)",
    )
    parser.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
        help="comma-separated, from: bare, dry-run (caselink without Datadog keys), live (caselink and fake Datadog), "
        "gthread (dry-run under gunicorn's own gthread worker; not run unless named)",
    )
    parser.add_argument(
        "--generator", choices=("auto", "python", "wrk"), default="auto", help="auto: wrk if installed, else python"
    )
    parser.add_argument("--wrk-threads", type=int, default=min(os.cpu_count() or 2, 4))
    # Defaults: what caselink's gunicorn.conf.py resolves to (WEB_CONCURRENCY, GUNICORN_THREADS or its own).
    caselink_conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    parser.add_argument("--workers", type=int, default=caselink_conf["workers"])
    parser.add_argument("--threads", type=int, default=caselink_conf["threads"])
    parser.add_argument(
        "--gunicorn-args",
        default="",
        help="more gunicorn settings for every target alike, as on its command line (e.g. --keep-alive 2)",
    )
    parser.add_argument("--fixture", type=Path, default=default_fixture())
    parser.add_argument("--output", type=Path, help="JSON results file (default: bench/results/ack-<time>.json)")
    parser.add_argument(
        "--same-servers",
        action="store_true",
        help="keep each target's server for every round (default: start every server afresh each round)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (databases, server logs)")
    args = parser.parse_args(argv)
    if not args.fixture.is_file():
        parser.error(f"no fixture at {args.fixture}; pass --fixture PATH (a Datadog incident webhook body)")
    args.environments = [e.strip() for e in args.environments.split(",") if e.strip()]
    if not args.environments or any(e not in ENVIRONMENTS for e in args.environments):
        parser.error(f"--environments: choose from {', '.join(ENVIRONMENTS)}")
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in args.targets if t not in TARGET_CHOICES]
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {', '.join(TARGET_CHOICES)}")
    if args.generator == "wrk" and shutil.which("wrk") is None:
        parser.error("--generator wrk: wrk is not installed (apt-get install wrk), use --generator python")
    args.generator_used = args.generator if args.generator != "auto" else ("wrk" if shutil.which("wrk") else "python")
    if args.new_connections:
        args.generator_used = "python"  # it opens a new connection whenever an answer says Connection: close
    return args


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit, so `finally` stops every server this script started."""

    def _exit(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_environment(
    args: argparse.Namespace, workdir: Path, environment: str, ids: IdCounter
) -> tuple[list[Measurement], dict[str, Any], dict[str, Any]]:
    """Every target, every round, in one environment: the measurements, the store checks, gunicorn's settings."""
    bench = Bench(args, workdir / environment, environment)
    bench.workdir.mkdir(parents=True, exist_ok=True)
    measurements: list[Measurement] = []
    checks: dict[str, Any] = {}
    try:
        gunicorn_settings = bench.check_same_gunicorn_settings()
        print(f"\n== environment {environment}: {ENVIRONMENTS[environment]}")
        print(
            "gunicorn, the same for every target: "
            + ", ".join(f"{name}={value}" for name, value in gunicorn_settings.items())
        )
        generators: dict[str, Any] = {}
        for key in args.targets:
            target = bench.start(key)
            bodies = Bodies(args.fixture, target.port, args.new_connections)
            if args.generator_used == "wrk":
                generators[key] = WrkGenerator(args.connections, args.wrk_threads, bodies, bench.workdir)
            else:
                generators[key] = PythonGenerator(args.connections, bodies, ids)
            print(f"started {LABELS[key]} on {target.url}", flush=True)
        print(f"generator: {next(iter(generators.values())).describe()}")
        print(
            f"load: POST /webhooks/datadog with {args.fixture.name}, a new id per request; "
            f"{args.warmup:g} s warm-up + {args.duration:g} s measured, {args.rounds} rounds"
            + ("" if args.same_servers else ", every server started afresh each round"),
            flush=True,
        )
        for round_number in range(1, args.rounds + 1):
            # Rotate the order each round, so no target always runs first or last.
            shift = (round_number - 1) % len(args.targets)
            order = args.targets[shift:] + args.targets[:shift]
            if round_number > 1 and not args.same_servers:
                # A fresh service each round, as a deploy starts one: how gunicorn shared out the
                # connections used to be settled once for a service's whole life.
                for key in order:
                    bench.restart(key)
            for key in order:
                m = bench.measure(generators[key], bench.targets[key], round_number)
                measurements.append(m)
                print(
                    f"round {round_number} {LABELS[key]:<18} {m.rps:>8.0f} req/s  p50 {m.p50_ms} ms  "
                    f"p99 {m.p99_ms} ms  errors {m.errors}  statuses {m.statuses}  "
                    f"load average {m.loadavg_before[0] if m.loadavg_before else '-'}  "
                    f"connections per worker {'/'.join(map(str, m.connections_per_worker)) or '-'}",
                    flush=True,
                )
        for key, target in bench.targets.items():
            if key == "bare":
                continue
            rows = [m for m in measurements if m.target == key]
            accepted = sum(m.accepted_total for m in rows)
            unanswered = sum(m.unanswered for m in rows)
            checks[key] = bench.store_check(target, accepted, unanswered)
    except Exception as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        for process in bench.processes:
            print(f"----- {process.name} log (tail) -----\n{process.logs()}", file=sys.stderr)
        raise
    finally:
        bench.stop_all()
    return measurements, checks, gunicorn_settings


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="caselink-bench-"))
    ids = IdCounter()
    results: dict[str, Any] = {}
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}")
    with terminate_on_sigterm():
        try:
            for environment in args.environments:
                results[environment] = run_environment(args, workdir, environment, ids)
        finally:
            if args.keep:
                print(f"kept {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)

    summaries: dict[str, Any] = {}
    for environment, (measurements, checks, _gunicorn) in results.items():
        summaries[environment] = summarise(measurements, args.targets)
        print(f"\n== {environment}: {ENVIRONMENTS[environment]}")
        print_report(summaries[environment], measurements, checks, generator_ceiling(measurements))
    print_environments(summaries, results)
    output = args.output or RESULTS / f"ack-{time.strftime('%Y%m%d-%H%M%S')}-{args.generator_used}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "webhook acknowledgements per second, caselink vs bare Flask under the same gunicorn settings",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "commit": _git_head(),
        },
        "generator": args.generator_used,
        "settings": {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in vars(args).items()
            if key not in ("output",)
        },
        "target_ratio": TARGET_RATIO,
        "target_round_ratio": TARGET_ROUND_RATIO,
        "environments": {
            environment: {
                "description": ENVIRONMENTS[environment],
                "gunicorn": gunicorn_settings,
                "generator_ceiling_rps_per_cpu_second": generator_ceiling(measurements),
                "summary": summaries[environment],
                "store_checks": checks,
                "rounds": [
                    {**asdict(m), "server_cpu_ms_per_request": m.server_cpu_ms_per_request} for m in measurements
                ],
            }
            for environment, (measurements, checks, gunicorn_settings) in results.items()
        },
    }
    output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results: {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output}")
    failed_checks = [key for _m, checks, _g in results.values() for key, check in checks.items() if not check["ok"]]
    return 1 if failed_checks else 0


def print_environments(summaries: dict[str, Any], results: dict[str, Any]) -> None:
    """One line per environment and caselink target: rounds with one worker holding most connections,
    req/s in those rounds and in the others, the bare app's req/s, and the ratio against it."""
    print(
        f"\n{'environment':<12}{'target':<18}{'lopsided':>9}{'req/s then':>12}{'otherwise':>11}"
        f"{'bare':>8}{'ratio':>7}{'worst round':>13}  splits"
    )
    for environment, summary in summaries.items():
        measurements = results[environment][0]
        for key, values in summary.items():
            rows = [m for m in measurements if m.target == key]
            lopsided = [m.rps for m in rows if m.lopsided]
            others = [m.rps for m in rows if not m.lopsided]
            ratio = values.get("ratio_to_bare")  # the headline's figure: the ratio of the req/s medians
            worst = min(values.get("ratio_rounds") or [0.0]) if key != "bare" else None
            print(
                f"{environment:<12}{LABELS[key]:<18}{f'{len(lopsided)} of {len(rows)}':>9}"
                f"{_span(lopsided):>12}{_span(others):>11}"
                f"{summary.get('bare', {}).get('rps_median') or 0:>8.0f}"
                f"{'-' if ratio is None else f'{ratio:.2f}':>7}"
                f"{'-' if worst is None else f'{worst:.2f}':>13}  "
                + " ".join("/".join(map(str, m.connections_per_worker)) or "-" for m in rows)
            )
    print(
        f"ratio: of the req/s medians, as above; target: caselink / bare >= {TARGET_RATIO} in every environment, "
        f"no round below {TARGET_ROUND_RATIO}; lopsided: one worker held {LOPSIDED_SHARE:.0%} or more "
        "of the connections"
    )


def _span(values: list[float]) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    return f"{low:.0f}" if low == high else f"{low:.0f}-{high:.0f}"


def _git_head() -> str | None:
    head = ROOT / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (ROOT / ".git" / ref.removeprefix("ref: ")).read_text().strip()[:12]
        return ref[:12]
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
