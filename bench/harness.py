"""What every benchmark shares, so that each script reads as what it measures.

Servers on loopback with environments built from scratch (`deployed` or `plain`), the fake Datadog,
throwaway databases with migrations, the load generators with CPU per request and the connection
split, the store check, rounds, medians and the results file. See bench/README.md.
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
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (str(ROOT), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from tests import servers  # noqa: E402 - the tests' processes and clean environments
from tests.servers import base_env  # noqa: E402
from tests.servers import free_port  # noqa: E402

RESULTS = BENCH / "results"
WEBHOOK_SECRET = "bench-webhook-secret"
ADMIN_TOKEN = "bench-admin-token"
FAKE_KEYS = {"DD_API_KEY": "fake-api-key", "DD_APP_KEY": "fake-application-key"}  # what the fake accepts
DEFAULT_POSTGRES = os.environ.get("CASELINK_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
_SHARED_FIXTURE = ROOT.parent / "shared" / "fixtures" / "datadog" / "incident-created.json"
FIXTURE = _SHARED_FIXTURE if _SHARED_FIXTURE.exists() else ROOT / "tests/fixtures/datadog/incident-created.json"
ENVIRONMENTS = {
    "deployed": "PYTHONUNBUFFERED=1, stdout a pipe drained by another process",
    "plain": "no PYTHONUNBUFFERED, stdout a file",
}

# -- command lines ------------------------------------------------------------------------


def add_load_options(parser: argparse.ArgumentParser, *, duration: float, warmup: float, rounds: int,
                     connections: int = 32) -> None:
    """The options of every benchmark that drives webhooks at a server."""
    parser.add_argument("--duration", type=float, default=duration, help="seconds measured per target and round")
    parser.add_argument("--warmup", type=float, default=warmup, help="seconds of load before each measurement")
    parser.add_argument("--rounds", type=int, default=rounds, help="rounds; the targets take turns in each")
    parser.add_argument("--connections", type=int, default=connections, help="concurrent keep-alive connections")
    parser.add_argument("--generator", choices=("auto", "python", "wrk"), default="auto",
                        help="auto: wrk if installed, else python")
    parser.add_argument("--wrk-threads", type=int, default=min(os.cpu_count() or 2, 4))
    parser.add_argument("--fixture", type=Path, default=FIXTURE)


def add_run_options(parser: argparse.ArgumentParser, postgres: bool = False) -> None:
    parser.add_argument("--output", type=Path, help="JSON results file (default: bench/results/<name>-<time>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (databases, server logs)")
    if postgres:
        parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES, help="server to create databases on")


def listed(parser: argparse.ArgumentParser, option: str, value: str, allowed: tuple[str, ...]) -> list[str]:
    """A comma-separated option as a list, every item one of `allowed`."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items or not set(items) <= set(allowed):
        parser.error(f"{option}: choose from {', '.join(allowed)}")
    return items


def generator_used(parser: argparse.ArgumentParser, choice: str) -> str:
    if choice == "wrk" and shutil.which("wrk") is None:
        parser.error("--generator wrk: wrk is not installed (apt-get install wrk), use --generator python")
    return choice if choice != "auto" else ("wrk" if shutil.which("wrk") else "python")


# -- processes ----------------------------------------------------------------------------


class Process(servers.Process):
    """A child process: the tests' one, plus readiness by URL, CPU time and a drained pipe.

    `drained`: stdout and stderr go into a pipe that another process (`cat`) reads into the log
    file, as a PaaS log router reads a dyno's output, instead of straight into the file.
    """

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path,
                 drained: bool = False, cwd: Path = ROOT) -> None:
        super().__init__(name, command, env, log_dir)
        self.drained, self.cwd = drained, cwd
        self.drain: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            if self.drained:
                self.drain = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=log, start_new_session=True)
            output = self.drain.stdin if self.drain else log
            self.popen = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=output,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        if self.drain and self.drain.stdin:
            self.drain.stdin.close()

    def stop(self, timeout: float = 30) -> int | None:
        code = super().stop(timeout)
        if self.drain is not None:
            try:
                self.drain.wait(10)
            except subprocess.TimeoutExpired:
                self.drain.kill()
        return code

    def logs(self, tail: int = 4000) -> str:
        return super().logs()[-tail:]

    def wait_until_up(self, url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"{self.name} exited:\n{self.logs()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status == 200:
                        return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not come up in {timeout:g}s:\n{self.logs()}")

    def cpu_seconds(self) -> float | None:
        """CPU time of the process and its children (gunicorn's master and workers), from /proc."""
        if self.popen is None:
            return None
        pids = [self.popen.pid] + [pid for pid in _pids() if _stat(pid)[1:2] == [str(self.popen.pid)]]
        return proc_cpu_seconds(pids)


def _pids() -> Iterator[int]:
    return (int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit())


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the name; [] when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return stat[stat.rfind(")") + 2 :].split()


def proc_cpu_seconds(pids: list[int]) -> float:
    fields = [_stat(pid) for pid in pids]
    return sum(int(f[11]) + int(f[12]) for f in fields if f) / os.sysconf("SC_CLK_TCK")


def connection_split(port: int, processes: int) -> list[int]:
    """Established connections to `port` each process holds (from `ss -tnp`), fewest first, 0 for idle ones.

    gunicorn's processes accept from one shared socket and a kept-alive connection stays where it
    was accepted: when one takes most of what a load generator opens at once, the others idle.
    """
    if shutil.which("ss") is None:
        return []
    listing = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
                             capture_output=True, text=True, timeout=10, check=False).stdout
    counts = sorted(Counter(re.findall(r"pid=(\d+)", listing)).values())
    return [0] * max(processes - len(counts), 0) + counts


class Server:
    """One gunicorn instance on its own loopback port; `restart` starts a fresh one in its place."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path, *, deployed: bool = False,
                 app: tuple[str, ...] = ("app:app",), root: Path = ROOT) -> None:
        self.name, self.port, self.workdir, self.deployed, self.root = name, free_port(), workdir, deployed, root
        # The configuration binds 0.0.0.0:$PORT; a benchmark stays on loopback.
        self.command = [sys.executable, "-m", "gunicorn", *app, "--bind", f"127.0.0.1:{self.port}"]
        self.env = dict(env, PORT=str(self.port), **({"PYTHONUNBUFFERED": "1"} if deployed else {}))
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = Process(name, self.command, self.env, workdir, deployed, cwd=root)

    def start(self) -> Server:
        self.process = Process(self.name, self.command, self.env, self.workdir, self.deployed, cwd=self.root)
        self.process.start()
        self.process.wait_until_up(self.url + "/healthz")
        return self

    def restart(self) -> None:
        self.process.stop()
        self.start()

    def check_running(self) -> None:
        if not self.process.running:
            raise RuntimeError(f"{self.name} died:\n{self.process.logs()}")


def worker(name: str, env: dict[str, str], workdir: Path, root: Path = ROOT) -> Process:
    """`flask --app app worker`, the delivery worker as its own process, from the tree at `root`; started."""
    process = Process(name, [sys.executable, "-m", "flask", "--app", "app", "worker"], env, workdir, cwd=root)
    process.start()
    return process


class Fake:
    """tests/fake_datadog.py in its own process, so its work never shares a GIL with ours."""

    def __init__(self, workdir: Path, cases: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, str(ROOT / "tests/fake_datadog.py"), "--port", str(self.port)]
        self.process = Process("fake-datadog", command + (["--cases", ",".join(cases)] if cases else []),
                               base_env(), workdir)

    def start(self) -> Fake:
        self.process.start()
        self.process.wait_until_up(self.url + "/_fake/summary")
        return self

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=120) as answer:
            return json.load(answer)

    def post(self, path: str, body: Any) -> None:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=30).close()

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        return self.get(f"/_fake/requests?since={since}")["requests"]  # type: ignore[no-any-return]


def source_tree(revision: str, workdir: Path) -> Path:
    """A folder holding the source of `revision`: the folder itself if it is one, else `git archive` of it."""
    if Path(revision).is_dir():
        return Path(revision).resolve()
    target = workdir / f"source-{revision}"
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], capture_output=True, check=False)
    if archive.returncode != 0:
        raise SystemExit(f"git archive {revision} failed: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


# -- databases and caselink's environment ------------------------------------------------


class Databases:
    """Throwaway SQLite files and PostgreSQL databases (caselink_bench_<random>), all dropped at the end."""

    def __init__(self, workdir: Path, postgres_url: str = DEFAULT_POSTGRES) -> None:
        self.workdir, self.postgres_url = workdir, postgres_url
        self.created: list[str] = []

    def new(self, store: str, label: str, template: str | None = None) -> str:
        """A fresh database (a copy of the database at URL `template` if given); its DATABASE_URL."""
        if store == "sqlite":
            path = self.workdir / f"{label}-{secrets.token_hex(3)}.db"
            if template:
                import sqlite3

                source = template.removeprefix("sqlite:///")
                with contextlib.closing(sqlite3.connect(source)) as connection:
                    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                shutil.copy(source, path)
            return f"sqlite:///{path}"
        name = f"caselink_bench_{secrets.token_hex(6)}"
        copy = f' TEMPLATE "{template.rsplit("/", 1)[1]}"' if template else ""
        self.admin(f'CREATE DATABASE "{name}"{copy}')
        self.created.append(name)
        return f"{self.postgres_url.rsplit('/', 1)[0]}/{name}"

    def drop_all(self) -> None:
        for name in reversed(self.created):
            try:
                self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as exc:
                print(f"could not drop database {name}: {exc}", file=sys.stderr)
        self.created.clear()

    def check_postgres(self) -> None:
        try:
            self.admin("SELECT 1")
        except Exception as exc:
            raise SystemExit(f"PostgreSQL is not reachable at {self.postgres_url} ({str(exc).splitlines()[0]}); "
                             "pass --postgres-url, or leave PostgreSQL out") from None

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.postgres_url, autocommit=True, connect_timeout=10) as connection:
            connection.execute(sql)  # type: ignore[arg-type]


def sqlalchemy_url(database_url: str) -> str:
    """The URL caselink.store.Store takes (caselink.config does the same with DATABASE_URL)."""
    for prefix in ("postgres://", "postgresql://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url.removeprefix(prefix)
    return database_url


def postgres_backend_cpu(database_url: str) -> float | None:
    """CPU seconds of the PostgreSQL backends serving this database, from /proc (same machine only)."""
    import psycopg

    try:
        with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as connection:
            rows = connection.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> "
                                      "pg_backend_pid()", (database_url.rsplit("/", 1)[1],))
            return proc_cpu_seconds([row[0] for row in rows])
    except Exception:
        return None


def caselink_env(database_url: str, fake_url: str | None = None, **settings: Any) -> dict[str, str]:
    """caselink's environment from scratch: live against the fake when `fake_url` is given, else dry-run."""
    values: dict[str, Any] = {"DATABASE_URL": database_url, "DATADOG_WEBHOOK_SECRET": WEBHOOK_SECRET,
                              "ADMIN_TOKEN": ADMIN_TOKEN, "RULES_FILE": ROOT / "rules.yaml"}
    if fake_url is not None:
        values.update(FAKE_KEYS, DD_API_URL=fake_url)
    return base_env(**(values | settings))


def migrate(env: dict[str, str], root: Path = ROOT) -> None:
    """`flask db upgrade` with the migrations of the source tree at `root`."""
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "db", "upgrade"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"flask db upgrade failed:\n{result.stdout}\n{result.stderr}")


def caselink(name: str, run: Run, store: str = "sqlite", fake_url: str | None = None, *, deployed: bool = False,
             root: Path = ROOT, **settings: Any) -> tuple[Server, str]:
    """caselink from the tree at `root` on a fresh, migrated database, under gunicorn with its
    gunicorn.conf.py; started."""
    database_url = run.databases.new(store, name)
    env = caselink_env(database_url, fake_url, **settings)
    migrate(env, root)
    return run.serve(Server(name, env, run.workdir, deployed=deployed, root=root)), database_url


def store_check(server_url: str, database_url: str, accepted: int, unanswered: int, wrk: bool,
                delivering: bool = False) -> dict[str, Any]:
    """Events stored (counted in the database, cross-checked with GET /api/events) against 202s received.

    Waits, 30 s at most, until the server has finished what it was sent (wrk leaves requests in
    flight) and, if `delivering`, until no link is pending. wrk never reads the answers in flight at
    its cut-off, so with wrk up to `unanswered` more events than 202s may be stored.
    """
    import sqlalchemy

    engine = sqlalchemy.create_engine(sqlalchemy_url(database_url))
    deadline, previous = time.monotonic() + 30, -1
    try:
        while True:
            with engine.connect() as connection:
                stored = connection.exec_driver_sql("SELECT count(*) FROM events").scalar_one()
                links = dict(connection.exec_driver_sql("SELECT state, count(*) FROM links GROUP BY state").all())
            busy = delivering and (links.get("pending") or links.get("claimed"))
            if (stored == previous and not busy) or time.monotonic() >= deadline:
                break
            previous = stored
            time.sleep(0.5)
    finally:
        engine.dispose()
    request = urllib.request.Request(server_url + "/api/events?limit=1",
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        newest = json.load(answer)["events"]
    return {**_stored_per_202(stored, accepted, unanswered, wrk),
            "newest_event_id_via_api": newest[0]["id"] if newest else None, "links_by_state": links}


def _stored_per_202(stored: int, accepted: int, unanswered: int, wrk: bool) -> dict[str, Any]:
    """One event stored per 202: exactly, or with wrk up to `unanswered` more (answers it dropped at its cut-offs)."""
    if wrk:
        ok, rule = accepted <= stored <= accepted + unanswered, \
            f"202s <= stored <= 202s + {unanswered} (answers wrk dropped at its cut-offs)"
    else:
        ok, rule = stored == accepted, "stored == 202s"
    return {"events_stored": stored, "answers_202": accepted, "rule": rule, "ok": ok}


def stored_check(path: Path, accepted: int, unanswered: int, wrk: bool) -> dict[str, Any]:
    """The store check for the bare app storing bodies (bench/bare_app.py): its rows against the 202s."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as connection:
        stored = connection.execute("SELECT count(*) FROM events").fetchone()[0]
    return {**_stored_per_202(stored, accepted, unanswered, wrk), "newest_event_id_via_api": None,
            "links_by_state": {}}


def print_store_check(label: str, check: dict[str, Any]) -> None:
    print(f"store check {label}: {check['events_stored']} events stored, {check['answers_202']} answers 202 "
          f"[{check['rule']}: {'ok' if check['ok'] else 'MISMATCH'}]; newest id via /api/events "
          f"{check['newest_event_id_via_api']}; links {check['links_by_state']}"
          + (f"; fake Datadog got {check['fake_link_creations']} link creation(s)"
             if "fake_link_creations" in check else ""))


# -- load -----------------------------------------------------------------------------------


class Bodies:
    """The fixture with a fixed-width slot for `id`, built once: a request is the pre-built head and body
    around a new 19-digit id, one bytes concatenation, and every one is a new event (a 202)."""

    def __init__(self, fixture: Path, port: int, new_connections: bool = False) -> None:
        raw = fixture.read_bytes()
        payload = json.loads(raw)
        quoted = json.dumps(payload.get("id")).encode() if isinstance(payload.get("id"), str) else b""
        if quoted and raw.count(quoted) == 1:
            self.template = raw.replace(quoted, b'"@@ID@@"')
        else:
            self.template = json.dumps(payload | {"id": "@@ID@@"}).encode()
        before, after = self.template.split(b"@@ID@@")
        self.prefix = (
            f"POST /webhooks/datadog HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {WEBHOOK_SECRET}"
            "\r\nContent-Type: application/json\r\n" + ("Connection: close\r\n" if new_connections else "")
            + f"Content-Length: {len(before) + 19 + len(after)}\r\n\r\n"
        ).encode() + before
        self.suffix, self.new_connections = after, new_connections

    def request(self, number: int, first_digit: int = 1) -> bytes:
        # The python generator's ids start with 1, probes' with 2, wrk's with 9: never one id twice.
        return self.prefix + b"%d%018d" % (first_digit, number) + self.suffix


_IDS = itertools.count(1)
# Each wrk run's ids start with its own number, so no two runs of a process send the same ids:
# repeats are answered 200 at a fraction of a new event's cost and would flatter the figures.
_WRK_RUNS = itertools.count(1)


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
    accepted_total: int
    unanswered: int
    generator_cpu_seconds: float | None
    server_cpu_seconds: float | None
    server_cpu_ms_per_request: float | None = None
    generator_cpu_share: float | None = None
    loadavg_before: list[float] = field(default_factory=list)
    connections_per_worker: list[int] = field(default_factory=list)  # halfway through the window, fewest first
    environment: str = ""

    def __post_init__(self) -> None:
        if self.server_cpu_seconds is not None and self.requests:
            self.server_cpu_ms_per_request = round(self.server_cpu_seconds * 1000 / self.requests, 4)
        if self.generator_cpu_seconds is not None and self.seconds:
            self.generator_cpu_share = round(self.generator_cpu_seconds / self.seconds, 3)

    @property
    def lopsided(self) -> bool:
        """One gunicorn process held three quarters or more of the connections."""
        split = self.connections_per_worker
        return len(split) > 1 and sum(split) > 0 and max(split) >= LOPSIDED_SHARE * sum(split)


LOPSIDED_SHARE = 0.75


def measure(server: Server, generator: str, args: argparse.Namespace, round_number: int, target: str = "",
            bodies: Bodies | None = None, processes: int = 0, cpu: Any = None) -> Measurement:
    """Load `server` for `args.warmup` then `args.duration` seconds: throughput, latency, CPU per request
    (of `cpu()`, default the server's processes), and, sampled halfway, the connections per process."""
    bodies = bodies or Bodies(args.fixture, server.port)
    loadavg = list(os.getloadavg())
    split: list[int] = []
    halfway = threading.Timer(args.warmup + args.duration / 2,
                              lambda: split.extend(connection_split(server.port, processes)))
    if processes:
        halfway.start()
    try:
        load = _wrk if generator == "wrk" else _python
        result = load(server.port, bodies, args, cpu or server.process.cpu_seconds)
    finally:
        halfway.cancel()
        if processes:
            halfway.join()
    server.check_running()
    statuses = result["statuses"]
    return Measurement(
        target or server.name, round_number, generator, round(result["seconds"], 3), result["requests"],
        round(result["requests"] / result["seconds"], 1) if result["seconds"] else 0.0,
        result["p50_ms"], result["p99_ms"],
        sum(n for status, n in statuses.items() if status != "202") + result["socket_errors"], statuses,
        result["accepted_total"], result["unanswered"], round(result["generator_cpu_seconds"], 3),
        None if result["server_cpu_seconds"] is None else round(result["server_cpu_seconds"], 3),
        loadavg_before=loadavg, connections_per_worker=split, environment=getattr(args, "environment", ""))


def describe_generator(generator: str, args: argparse.Namespace) -> str:
    if generator == "wrk":
        return f"wrk ({args.wrk_threads} threads, {args.connections} keep-alive connections, bench/wrk_ack.lua)"
    kind = "a new one per request" if getattr(args, "new_connections", False) else "keep-alive"
    return f"python (asyncio raw-socket protocol, {args.connections} connections, {kind}, in this process)"


def _delta(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else end - start


def _wrk(port: int, bodies: Bodies, args: argparse.Namespace, cpu: Any) -> dict[str, Any]:
    """One wrk run to warm up, one to measure (its start and exit count as server time: a slight overestimate)."""
    body_file = Path(tempfile.mkstemp(prefix="caselink-wrk-", suffix=".json")[1])
    body_file.write_bytes(bodies.template)

    def wrk(seconds: float) -> tuple[dict[str, Any], float]:
        command = ["wrk", f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{max(round(seconds), 1)}s",
                   "--timeout", "30s", "-s", str(BENCH / "wrk_ack.lua"), f"http://127.0.0.1:{port}/webhooks/datadog",
                   "--", str(body_file), WEBHOOK_SECRET, f"9{next(_WRK_RUNS):05d}"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, check=False)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        used = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        return json.loads(line.removeprefix("BENCH_JSON ")), used

    try:
        warm, _ = wrk(args.warmup)
        start = cpu()
        measured, used = wrk(args.duration)
        end = cpu()
    finally:
        body_file.unlink()
    return {"seconds": measured["duration_us"] / 1e6, "requests": measured["requests"],
            "p50_ms": measured["p50_us"] / 1000, "p99_ms": measured["p99_us"] / 1000,
            "statuses": {"202": measured["accepted"], "other": measured["rejected"]} if measured["rejected"]
            else {"202": measured["accepted"]},
            "socket_errors": sum(measured[k] for k in ("connect", "read", "write", "timeout")),
            "accepted_total": warm["accepted"] + measured["accepted"],
            "unanswered": 2 * args.connections,  # wrk drops what is in flight at its end: one a connection a run
            "generator_cpu_seconds": used, "server_cpu_seconds": _delta(start, end)}


class _Client(asyncio.Protocol):
    """One connection with one request in flight at a time; answers parsed by Content-Length."""

    def __init__(self, load: _Load) -> None:
        self.load, self.transport, self.buffer, self.sent_at, self.busy = load, None, bytearray(), 0.0, False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        if self.load.stopping or self.transport is None:
            return self.load.idle(self)
        self.busy, self.sent_at = True, time.perf_counter()
        self.transport.write(self.load.bodies.request(next(_IDS)))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
        total = end + 4 + (int(length.group(1)) if length else 0)
        if len(self.buffer) < total:
            return
        del self.buffer[:total]
        self.busy = False
        self.load.answered(int(head[9:12]), time.perf_counter() - self.sent_at)
        if b"\r\nconnection: close" in head:
            self.transport.close()  # type: ignore[attr-defined]
            self.transport = None
            return self.load.reconnect()
        self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.busy:
            self.busy = False
            self.load.failed()
            self.load.reconnect()
        self.transport = None
        self.load.idle(self)


class _Load:
    def __init__(self, port: int, bodies: Bodies) -> None:
        self.port, self.bodies, self.loop = port, bodies, asyncio.get_running_loop()
        self.measuring = self.stopping = False
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.socket_errors = self.accepted_total = 0
        self.open: set[_Client] = set()
        self.every: list[_Client] = []
        self.all_idle = asyncio.Event()

    def answered(self, status: int, latency: float) -> None:
        self.accepted_total += status == 202
        if self.measuring:
            self.latencies.append(latency)
            self.statuses[str(status)] += 1

    def failed(self) -> None:
        self.socket_errors += self.measuring

    def reconnect(self) -> None:
        if not self.stopping:
            self.loop.create_task(self.connect())

    def idle(self, client: _Client) -> None:
        self.open.discard(client)
        if self.stopping and not any(c.busy for c in self.open):
            self.all_idle.set()

    async def connect(self) -> None:
        client = _Client(self)
        self.open.add(client)
        self.every.append(client)
        try:
            await self.loop.create_connection(lambda: client, "127.0.0.1", self.port)
        except OSError:
            self.open.discard(client)
            self.failed()
            await asyncio.sleep(0.05)
            self.reconnect()


async def _python_load(port: int, bodies: Bodies, args: argparse.Namespace, cpu: Any) -> dict[str, Any]:
    load = _Load(port, bodies)
    for _ in range(args.connections):
        await load.connect()
    await asyncio.sleep(args.warmup)
    start, load.measuring = cpu(), True
    own, started = time.process_time(), time.perf_counter()
    await asyncio.sleep(args.duration)
    seconds, used = time.perf_counter() - started, time.process_time() - own
    load.measuring, end, load.stopping = False, cpu(), True
    if not any(c.busy for c in load.open):
        load.all_idle.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(load.all_idle.wait(), 30)
    unanswered = sum(c.busy for c in load.open)
    for client in load.every:
        if client.transport is not None:
            client.transport.close()  # type: ignore[attr-defined]
    await asyncio.sleep(0.05)
    latencies = sorted(load.latencies)
    return {"seconds": seconds, "requests": len(latencies), "p50_ms": ms(percentile(latencies, 50)),
            "p99_ms": ms(percentile(latencies, 99)), "statuses": dict(load.statuses),
            "socket_errors": load.socket_errors, "accepted_total": load.accepted_total, "unanswered": unanswered,
            "generator_cpu_seconds": used, "server_cpu_seconds": _delta(start, end)}


def _python(port: int, bodies: Bodies, args: argparse.Namespace, cpu: Any) -> dict[str, Any]:
    return asyncio.run(_python_load(port, bodies, args, cpu))


# -- figures ----------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    return sorted_values[max(math.ceil(q / 100 * len(sorted_values)), 1) - 1] if sorted_values else None


def median(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def show(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def joined(values: Any, spec: str = ".0f", sep: str = "/") -> str:
    return sep.join(show(v, spec) for v in values)


def rotated(items: list[Any], round_number: int) -> list[Any]:
    """This round's order (rounds count from 1): a different one first each round, so the noise of a
    busy machine falls on every target alike."""
    shift = (round_number - 1) % len(items) if items else 0
    return items[shift:] + items[:shift]


# -- a run ------------------------------------------------------------------------------------


class Run:
    """A benchmark's temporary folder, databases and processes: on failure the logs' tails are shown; at
    the end (SIGTERM included) every process stops, every database is dropped, the folder is removed."""

    def __init__(self, name: str, args: argparse.Namespace, argv: list[str] | None) -> None:
        self.name, self.args = name, args
        self.workdir = Path(tempfile.mkdtemp(prefix=f"caselink-bench-{name}-"))
        self.databases = Databases(self.workdir, getattr(args, "postgres_url", DEFAULT_POSTGRES))
        self.processes: list[Process] = []
        self.servers: list[Server] = []  # a server's process changes when it restarts
        self.document: dict[str, Any] = {
            "benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "machine": machine(),
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "output"},
        }

    def serve(self, server: Server) -> Server:
        self.servers.append(server)
        return server.start()

    def started(self, process: Process) -> Process:
        self.processes.append(process)
        return process

    def stop(self, *servers: Server | Process) -> None:
        for item in servers:
            item.process.stop() if isinstance(item, Server) else item.stop()
            for started in (self.servers, self.processes):
                if item in started:
                    started.remove(item)  # type: ignore[arg-type]

    def __enter__(self) -> Run:
        def _exit(signum: int, _frame: Any) -> None:
            raise SystemExit(128 + signum)

        self._previous = signal.signal(signal.SIGTERM, _exit)
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, _tb: Any) -> None:
        if isinstance(exc, Exception):
            print(f"benchmark failed: {exc}", file=sys.stderr)
            for log in sorted(self.workdir.glob("*.log")):
                print(f"----- {log.name} (tail) -----\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
        for process in [*(server.process for server in self.servers), *self.processes][::-1]:
            process.stop()
        self.databases.drop_all()
        signal.signal(signal.SIGTERM, self._previous)
        if getattr(self.args, "keep", False):
            print(f"kept {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def write(self, prefix: str | None = None, suffix: str = "", **content: Any) -> Path:
        """The results file: settings, machine and commit, then `content`; printed as `results: PATH`."""
        output = getattr(self.args, "output", None)
        path = output or RESULTS / f"{prefix or self.name}-{time.strftime('%Y%m%d-%H%M%S')}{suffix}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.document | content, indent=2, default=_plain) + "\n")
        print(f"results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        return path


def _plain(value: Any) -> Any:
    return value.__dict__ if hasattr(value, "__dict__") else str(value)


def machine() -> dict[str, Any]:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip()
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "commit": head or None, "loadavg_at_start": list(os.getloadavg())}
