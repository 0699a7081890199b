"""What bench/delivery_rate.py and bench/latency_scaling.py share.

The generic pieces (free ports, environments built from scratch, child processes
with their CPU time, the load generators, percentiles, SIGTERM handling) come
from bench/ack_throughput.py unchanged; this module adds what the delivery
benchmarks need on top: the fake Datadog (tests/fake_datadog.py) in its own process,
throwaway PostgreSQL databases, migrations, caselink's environment, and the
results file.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import shutil
import statistics
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (str(ROOT), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from ack_throughput import ADMIN_TOKEN  # noqa: E402
from ack_throughput import FAKE_API_KEY  # noqa: E402
from ack_throughput import FAKE_APP_KEY  # noqa: E402
from ack_throughput import RESULTS  # noqa: E402
from ack_throughput import WEBHOOK_SECRET  # noqa: E402
from ack_throughput import Process  # noqa: E402
from ack_throughput import _git_head  # noqa: E402
from ack_throughput import base_env  # noqa: E402
from ack_throughput import free_port  # noqa: E402
from ack_throughput import percentile  # noqa: E402
from ack_throughput import terminate_on_sigterm  # noqa: E402

from tests.servers import flask  # noqa: E402

__all__ = [
    "ADMIN_TOKEN",
    "WEBHOOK_SECRET",
    "Process",
    "base_env",
    "free_port",
    "percentile",
    "terminate_on_sigterm",
]

DEFAULT_POSTGRES = os.environ.get("CASELINK_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


# -- HTTP ---------------------------------------------------------------------------


def get_json(url: str, timeout: float = 30) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.load(answer)


def post_json(url: str, body: Any, timeout: float = 30) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.load(answer)


# -- the fake Datadog -----------------------------------------------------------------


class Fake:
    """tests/fake_datadog.py in its own process, so its work never shares a GIL with ours."""

    def __init__(self, workdir: Path, cases: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            str(ROOT / "tests" / "fake_datadog.py"),
            "--port",
            str(self.port),
            "--cases",
            ",".join(cases),
        ]
        self.process = Process("fake-datadog", command, base_env(), workdir)

    def start(self) -> Fake:
        self.process.start()
        self.process.wait_until_up(self.url + "/_fake/summary")
        return self

    def reset(self) -> None:
        post_json(self.url + "/_fake/reset", {})

    def configure(self, **changes: Any) -> None:
        post_json(self.url + "/_fake/configure", changes)

    def add_cases(self, keys: list[str]) -> None:
        post_json(self.url + "/_fake/cases", keys)

    def summary(self) -> dict[str, int]:
        return get_json(self.url + "/_fake/summary")

    def state(self) -> dict[str, Any]:
        return get_json(self.url + "/_fake/state", timeout=120)

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        return get_json(f"{self.url}/_fake/requests?since={since}", timeout=120)["requests"]


def case_uuid(key: str) -> str:
    from tests.fake_datadog import case_uuid as fake_case_uuid

    return fake_case_uuid(key)


# -- databases ------------------------------------------------------------------------


class Databases:
    """Throwaway SQLite files and PostgreSQL databases (caselink_bench_<random>), all dropped at the end."""

    def __init__(self, workdir: Path, postgres_url: str = DEFAULT_POSTGRES) -> None:
        self.workdir = workdir
        self.postgres_url = postgres_url
        self.created: list[str] = []

    def new(self, store: str, label: str) -> str:
        """A fresh, empty database; returns its DATABASE_URL as an operator would write it."""
        if store == "sqlite":
            path = self.workdir / f"{label}-{secrets.token_hex(3)}.db"
            return f"sqlite:///{path}"
        name = f"caselink_bench_{secrets.token_hex(6)}"
        self._admin(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return f"{self.postgres_url.rsplit('/', 1)[0]}/{name}"

    def drop_all(self) -> None:
        for name in reversed(self.created):
            try:
                self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as exc:
                print(f"could not drop database {name}: {exc}", file=sys.stderr)
        self.created.clear()

    def check_postgres(self) -> None:
        try:
            self._admin("SELECT 1")
        except Exception as exc:
            raise SystemExit(
                f"PostgreSQL is not reachable at {self.postgres_url} ({str(exc).splitlines()[0]}); "
                "pass --postgres-url, or leave PostgreSQL out"
            ) from None

    def _admin(self, sql: str) -> None:
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

    name = database_url.rsplit("/", 1)[1]
    try:
        with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as connection:
            pids = [
                row[0]
                for row in connection.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (name,)
                )
            ]
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in pids:
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = stat[stat.rfind(")") + 2 :].split()
                total += int(fields[11]) + int(fields[12])
        return total / tick
    except Exception:
        return None


# -- caselink -------------------------------------------------------------------------


def caselink_env(database_url: str, fake_url: str | None, **settings: Any) -> dict[str, str]:
    """caselink's environment from scratch: live against the fake when `fake_url` is given, else dry-run."""
    values: dict[str, Any] = {
        "DATABASE_URL": database_url,
        "DATADOG_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "RULES_FILE": ROOT / "rules.yaml",
    }
    if fake_url is not None:
        values.update(DD_API_KEY=FAKE_API_KEY, DD_APP_KEY=FAKE_APP_KEY, DD_API_URL=fake_url)
    values.update(settings)
    return base_env(**values)


def migrate(env: dict[str, str]) -> None:
    result = flask(env, "db", "upgrade", timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"flask db upgrade failed:\n{result.stdout}\n{result.stderr}")


def web(name: str, env: dict[str, str], workdir: Path, *, deployed: bool = False) -> tuple[Process, int]:
    """caselink under gunicorn with the repo's gunicorn.conf.py, bound to loopback; started and up.

    `deployed`: as a PaaS runs it, with PYTHONUNBUFFERED=1 and its output read through a pipe
    by another process (ack_throughput.ENVIRONMENTS).
    """
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "app:app", "--bind", f"127.0.0.1:{port}"]
    env = dict(env, PORT=str(port), **({"PYTHONUNBUFFERED": "1"} if deployed else {}))
    process = Process(name, command, env, workdir, drained=deployed)
    process.start()
    process.wait_until_up(f"http://127.0.0.1:{port}/healthz")
    return process, port


def worker(name: str, env: dict[str, str], workdir: Path) -> Process:
    """`flask --app app worker`, the delivery worker as its own process; started."""
    process = Process(name, [sys.executable, "-m", "flask", "--app", "app", "worker"], env, workdir)
    process.start()
    return process


# -- figures and results ------------------------------------------------------------


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "commit": _git_head(),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def write_results(prefix: str, document: dict[str, Any], output: Path | None) -> Path:
    path = output or RESULTS / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


@contextlib.contextmanager
def in_workdir(workdir: Path, *, keep: bool) -> Iterator[None]:
    """On failure, show the tail of every log in `workdir`; then remove it unless told to keep it."""
    try:
        yield
    except Exception as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        for log in sorted(workdir.glob("*.log")):
            print(f"----- {log.name} (tail) -----\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
        raise
    finally:
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def cleanup(processes: list[Process], databases: Databases | None) -> Iterator[None]:
    """Stop every process (newest first) and drop every database, however the run ends."""
    try:
        yield
    finally:
        for process in reversed(processes):
            process.stop()
        if databases is not None:
            databases.drop_all()
