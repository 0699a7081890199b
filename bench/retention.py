"""Retention: the database's size over simulated months, and webhook acks while events are pruned.

Part 1, size. `--events` events arrive over `--days` simulated days. They are written through
`caselink.store.Store.record` (the webhook path's own write) with simulated `received_at` times,
not over HTTP: a million webhooks over HTTP would take most of an hour on this machine. After each
simulated day the housekeeping round runs with the simulated clock (per-rule statistics, then
pruning past `--retention`), as the delivery worker does in the background. On PostgreSQL a plain
`VACUUM events` follows each day: in a real day autovacuum runs many times, in a simulated one
(a second or two) it would not get to run at all. Reported: the size by day, its growth after day
`retention + 1`, bytes per retained event at the end, and the longest housekeeping batch (each
batch is one read and one short write transaction).

Part 2, acks. caselink under gunicorn (dry-run, its in-process housekeeping on) serves a database
seeded with `--backlog` events 40 days old, already counted. With EVENT_RETENTION=30d it prunes
them while the load runs; with 3650d it has nothing to prune. The two take turns over `--rounds`
rounds (each on a fresh copy of the seeded database); the figure is the median ratio of acks/s.

    python bench/retention.py                      # a few minutes: 100,000 events, SQLite and PostgreSQL
    python bench/retention.py --events 1000000     # the full run of issue 14
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ack_throughput import Bodies
from ack_throughput import IdCounter
from ack_throughput import PythonGenerator
from ack_throughput import default_fixture
from harness import ROOT
from harness import Databases
from harness import caselink_env
from harness import machine
from harness import median
from harness import migrate
from harness import shown
from harness import sqlalchemy_url
from harness import terminate_on_sigterm
from harness import web
from harness import write_results

from caselink.events import EntityRef
from caselink.events import Event
from caselink.housekeeping import Housekeeper
from caselink.rules import load_rules
from caselink.store import Store
from handlers import REGISTRY

DAY = 86400.0
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z, the first simulated day
BATCH = 250  # events per transaction, as group commit makes them under load


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events over the simulated days")
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--retention", type=int, default=30, help="EVENT_RETENTION in days")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--backlog", type=int, default=30_000, help="old events to prune during the ack A/B")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds measured per round")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--skip-size", action="store_true")
    parser.add_argument("--skip-acks", action="store_true")
    parser.add_argument("--output", type=Path)
    return parser.parse_args(argv)


class Payloads:
    """Events as the Datadog handler makes them from the sample incident: about ten updates per
    incident, each naming one of 200 cases, so most events plan a link that exists already."""

    def __init__(self) -> None:
        self.template = json.loads(default_fixture().read_bytes())
        self.ruleset = load_rules(ROOT / "rules.yaml", sources=tuple(REGISTRY))

    def event(self, number: int) -> Event:
        incident = str(uuid.UUID(int=number // 10 + 1))
        case = f"OPS-{number // 10 % 200 + 1}"
        payload = dict(self.template, id=f"{number:019d}")
        payload["incident"] = dict(payload["incident"], id=incident, title=f"Checkout latency, see {case}")
        return Event(
            source="datadog",
            kind="incident.created" if number % 10 == 0 else "incident.updated",
            dedup_key=f"incident.updated:{number:019d}",
            entity=EntityRef("INCIDENT", incident),
            title=payload["incident"]["title"],
            message=payload["incident"]["message"],
            severity="SEV-2",
            status="active",
            url=payload["incident"]["url"],
            tags={"env": ("prod",), "service": ("payments-api",), "team": ("checkout",)},
            payload=payload,
        )

    def record(self, store: Store, first: int, count: int, start: float, spacing: float) -> None:
        for offset in range(0, count, BATCH):
            items = []
            for number in range(first + offset, first + min(offset + BATCH, count)):
                event = self.event(number)
                items.append((event, self.ruleset.evaluate(event)))
            store.record(items, ruleset=self.ruleset.digest, dry_run=True, now=start + offset * spacing)


def database_bytes(store: Store, url: str) -> int:
    if store.dialect == "sqlite":
        path = Path(url.removeprefix("sqlite:///"))
        with sqlite3.connect(path) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return path.stat().st_size + sum(
            extra.stat().st_size for extra in (Path(f"{path}-wal"), Path(f"{path}-shm")) if extra.exists()
        )
    with store.engine.connect() as connection:
        return int(connection.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one())


def table_bytes(store: Store) -> dict[str, int] | None:
    """Bytes per table with its indexes (PostgreSQL; SQLite when built with dbstat)."""
    tables = ("events", "links", "rule_links", "rule_stats", "service_state")
    with store.engine.connect() as connection:
        if store.dialect == "postgresql":
            return {
                table: int(connection.exec_driver_sql(f"SELECT pg_total_relation_size('{table}')").scalar_one())
                for table in tables
            }
        try:
            rows = connection.exec_driver_sql(
                "SELECT coalesce(m.tbl_name, s.name), sum(s.pgsize) FROM dbstat s"
                " LEFT JOIN sqlite_master m ON m.name = s.name GROUP BY 1"
            ).all()
        except Exception:  # noqa: BLE001 - SQLite built without dbstat
            return None
        return {str(name): int(size) for name, size in rows}


def count_rows(store: Store, table: str) -> int:
    with store.engine.connect() as connection:
        return int(connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())  # noqa: S608 - a fixed name


class Timed:
    """Wraps the store's housekeeping calls to time each batch (its reads and its write), and every
    write transaction opened with `Store.transaction` (housekeeping's; `record` uses its own)."""

    def __init__(self, store: Store) -> None:
        self.seconds: dict[str, list[float]] = {"count": [], "prune": [], "write": []}
        transaction = store.transaction

        @contextlib.contextmanager
        def timed_transaction(*, write: bool = True) -> Iterator[Any]:
            started = time.perf_counter()
            with transaction(write=write) as connection:
                yield connection
            if write:
                self.seconds["write"].append(time.perf_counter() - started)

        store.transaction = timed_transaction  # type: ignore[method-assign]
        for name, method in (("count", "count_rule_stats"), ("prune", "prune_events")):
            original = getattr(store, method)

            def timed(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    self.seconds[_name].append(time.perf_counter() - started)

            setattr(store, method, timed)


def size_run(kind: str, databases: Databases, args: argparse.Namespace, payloads: Payloads) -> dict[str, Any]:
    url = databases.new(kind, "size")
    migrate(caselink_env(url, None))
    store = Store(sqlalchemy_url(url))
    timed = Timed(store)
    clock = [START]
    keeper = Housekeeper(store, args.retention * DAY, clock=lambda: clock[0])
    per_day = args.events // args.days
    days = []
    insert_seconds = housekeeping_seconds = longest_write = 0.0
    try:
        for day in range(args.days):
            started = time.perf_counter()
            payloads.record(store, day * per_day, per_day, START + day * DAY, DAY / per_day)
            insert_seconds += time.perf_counter() - started
            clock[0] = START + (day + 1) * DAY
            started = time.perf_counter()
            report = keeper.round()
            housekeeping_seconds += time.perf_counter() - started
            longest_write = max(longest_write, report.longest_write)
            if store.dialect == "postgresql":
                with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                    connection.exec_driver_sql("VACUUM events")
            days.append(
                {
                    "day": day + 1,
                    "bytes": database_bytes(store, url),
                    "events": count_rows(store, "events"),
                    "counted": report.counted,
                    "pruned": report.deleted,
                }
            )
            if (day + 1) % 10 == 0:
                print(f"  {kind} day {day + 1}: {days[-1]['bytes'] / 1e6:.1f} MB, {days[-1]['events']} events")
        stats = store.rule_stats(None)
        links = count_rows(store, "links")
        tables = table_bytes(store)
    finally:
        store.dispose()
    settled = days[args.retention]  # the first day after which every day prunes one
    last = days[-1]
    return {
        "events_per_day": per_day,
        "days": days,
        "bytes_after_first_retention_day": settled["bytes"],
        "bytes_at_end": last["bytes"],
        "growth_after_retention": round(last["bytes"] / settled["bytes"], 3),
        "retained_events_at_end": last["events"],
        "bytes_per_retained_event": round(last["bytes"] / last["events"]),
        "links_at_end": links,
        "table_bytes_at_end": tables,
        "matched_counted_all_time": sum(rule.matched for rule in stats.values()),
        "events_recorded": per_day * args.days,
        "insert_events_per_second": round(per_day * args.days / insert_seconds),
        "housekeeping_seconds_total": round(housekeeping_seconds, 2),
        "count_batch_ms": _batch_ms(timed.seconds["count"]),
        "prune_batch_ms": _batch_ms(timed.seconds["prune"]),
        "longest_prune_write_transaction_ms": round(longest_write * 1000, 2),
        "housekeeping_write_transaction_ms": _batch_ms(timed.seconds["write"]),
    }


def _batch_ms(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"median": None, "max": None, "batches": 0}
    ordered = sorted(seconds)
    return {
        "median": round(statistics.median(ordered) * 1000, 2),
        "p99": round(ordered[int(len(ordered) * 0.99)] * 1000, 2),
        "max": round(ordered[-1] * 1000, 2),
        "batches": len(ordered),
    }


# -- acks with and without pruning ------------------------------------------------------


def seeded(kind: str, databases: Databases, args: argparse.Namespace, payloads: Payloads, workdir: Path) -> str:
    url = databases.new(kind, "seed")
    migrate(caselink_env(url, None))
    store = Store(sqlalchemy_url(url))
    try:
        payloads.record(store, 10_000_000, args.backlog, time.time() - 40 * DAY, 1.0)
        while store.count_rule_stats(limit=5000, settle=0):
            pass
    finally:
        store.dispose()
    return url


def copy_of(kind: str, seed: str, databases: Databases, workdir: Path) -> str:
    if kind == "sqlite":
        source = Path(seed.removeprefix("sqlite:///"))
        with sqlite3.connect(source) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        target = workdir / f"copy-{uuid.uuid4().hex[:6]}.db"
        shutil.copy(source, target)
        return f"sqlite:///{target}"
    name = f"caselink_bench_{uuid.uuid4().hex[:12]}"
    databases._admin(f'CREATE DATABASE "{name}" TEMPLATE "{seed.rsplit("/", 1)[1]}"')  # noqa: SLF001
    databases.created.append(name)
    return f"{seed.rsplit('/', 1)[0]}/{name}"


def ack_run(kind: str, databases: Databases, args: argparse.Namespace, payloads: Payloads, workdir: Path) -> Any:
    seed = seeded(kind, databases, args, payloads, workdir)
    ids = IdCounter()
    rounds: list[dict[str, Any]] = []
    for number in range(args.rounds):
        order = ("pruning", "not pruning") if number % 2 == 0 else ("not pruning", "pruning")
        measured: dict[str, Any] = {}
        for label in order:
            url = copy_of(kind, seed, databases, workdir)
            retention = "30d" if label == "pruning" else "3650d"
            env = caselink_env(url, None, EVENT_RETENTION=retention, LOG_LEVEL="WARNING")
            process, port = web(f"{kind}-{label.replace(' ', '-')}-{number}", env, workdir)
            try:
                generator = PythonGenerator(args.connections, Bodies(default_fixture(), port), ids)
                result = generator.run(port, args.warmup, args.duration, process.cpu_seconds)
            finally:
                process.stop()
            store = Store(sqlalchemy_url(url))
            try:
                left = count_rows(store, "events") - result["accepted_total"]
            finally:
                store.dispose()
            measured[label] = {
                "acks_per_second": round(result["statuses"].get("202", 0) / result["seconds"], 1),
                "p99_ms": result["p99_ms"],
                "errors": sum(n for status, n in result["statuses"].items() if status != "202")
                + result["socket_errors"],
                "old_events_pruned": args.backlog - left,
            }
        measured["ratio"] = round(
            measured["pruning"]["acks_per_second"] / max(measured["not pruning"]["acks_per_second"], 1e-9), 3
        )
        rounds.append(measured)
        print(
            f"  {kind} round {number + 1}: pruning {measured['pruning']['acks_per_second']}/s "
            f"({measured['pruning']['old_events_pruned']} pruned), not pruning "
            f"{measured['not pruning']['acks_per_second']}/s, ratio {measured['ratio']}"
        )
    return {
        "backlog": args.backlog,
        "rounds": rounds,
        "median_ratio": median([r["ratio"] for r in rounds]),
        "median_acks_pruning": median([r["pruning"]["acks_per_second"] for r in rounds]),
        "median_acks_not_pruning": median([r["not pruning"]["acks_per_second"] for r in rounds]),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="caselink-retention-"))
    databases = Databases(workdir)
    stores = [kind.strip() for kind in args.stores.split(",") if kind.strip()]
    if "postgresql" in stores:
        databases.check_postgres()
    payloads = Payloads()
    document: dict[str, Any] = {"machine": machine(), "args": vars(args) | {"output": None}, "size": {}, "acks": {}}
    try:
        with terminate_on_sigterm():
            for kind in stores:
                if not args.skip_size:
                    print(f"size: {args.events} events over {args.days} days, {args.retention}-day retention, {kind}")
                    document["size"][kind] = size_run(kind, databases, args, payloads)
                    figures = document["size"][kind]
                    print(
                        f"  {kind}: {figures['bytes_after_first_retention_day'] / 1e6:.1f} MB on day "
                        f"{args.retention + 1}, {figures['bytes_at_end'] / 1e6:.1f} MB on day {args.days} "
                        f"(x{figures['growth_after_retention']}); {figures['bytes_per_retained_event']} bytes "
                        f"per retained event; housekeeping write transactions max "
                        f"{figures['housekeeping_write_transaction_ms']['max']} ms"
                    )
                if not args.skip_acks:
                    print(f"acks with and without pruning {args.backlog} old events, {kind}")
                    document["acks"][kind] = ack_run(kind, databases, args, payloads, workdir)
                    print(f"  {kind}: median ratio pruning / not pruning {document['acks'][kind]['median_ratio']}")
    finally:
        databases.drop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    path = write_results("retention", document, args.output)
    print(f"results: {shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
