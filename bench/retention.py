"""Retention: the database's size over simulated months, and webhook acks while events are pruned.

Size: `--events` events over `--days` simulated days through Store.record, housekeeping after each day on
the simulated clock. Acks: caselink on a copy of a database with `--backlog` old events, pruning them
(EVENT_RETENTION=30d) or not (3650d), taking turns; the median ratio of acks/s.

    python bench/retention.py                      # a few minutes: 100,000 events, SQLite and PostgreSQL
    python bench/retention.py --events 1000000     # the full run of issue 14

See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness
from harness import median

from caselink.events import EntityRef
from caselink.events import Event
from caselink.housekeeping import Housekeeper
from caselink.rules import load_rules
from caselink.store import Store
from handlers import REGISTRY

DAY = 86400.0
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z, the first simulated day


class Payloads:
    """The sample incident as the Datadog handler makes it: about ten updates per incident, each naming
    one of 200 cases, so most events plan a link that exists already."""

    def __init__(self) -> None:
        self.template = json.loads(harness.FIXTURE.read_bytes())
        self.ruleset = load_rules(harness.ROOT / "rules.yaml", sources=tuple(REGISTRY))

    def event(self, number: int) -> Event:
        incident, case = str(uuid.UUID(int=number // 10 + 1)), f"OPS-{number // 10 % 200 + 1}"
        payload = dict(self.template, id=f"{number:019d}")
        payload["incident"] = dict(payload["incident"], id=incident, title=f"Checkout latency, see {case}")
        return Event(source="datadog", kind="incident.created" if number % 10 == 0 else "incident.updated",
                     dedup_key=f"incident.updated:{number:019d}", entity=EntityRef("INCIDENT", incident),
                     title=payload["incident"]["title"], message=payload["incident"]["message"], severity="SEV-2",
                     status="active", url=payload["incident"]["url"], payload=payload,
                     tags={"env": ("prod",), "service": ("payments-api",), "team": ("checkout",)})

    def record(self, store: Store, first: int, count: int, start: float, spacing: float) -> None:
        for offset in range(0, count, 250):  # events per transaction, as group commit makes them under load
            items = [(event, self.ruleset.evaluate(event)) for event in
                     map(self.event, range(first + offset, first + min(offset + 250, count)))]
            store.record(items, ruleset=self.ruleset.digest, dry_run=True, now=start + offset * spacing)


def sql(store: Store, query: str) -> Any:
    with store.engine.connect() as connection:
        return connection.exec_driver_sql(query).scalar_one()


def database_bytes(store: Store, url: str) -> int:
    """SQLite: the file with its WAL after a checkpoint; PostgreSQL: pg_database_size."""
    if store.dialect != "sqlite":
        return int(sql(store, "SELECT pg_database_size(current_database())"))
    path = Path(url.removeprefix("sqlite:///"))
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())


def table_bytes(store: Store) -> dict[str, int] | None:
    """Bytes per table with its indexes (PostgreSQL; SQLite when built with dbstat)."""
    if store.dialect == "postgresql":
        return {t: int(sql(store, f"SELECT pg_total_relation_size('{t}')"))
                for t in ("events", "links", "rule_links", "rule_stats", "service_state")}
    with store.engine.connect() as connection, contextlib.suppress(Exception):
        return {str(name): int(size) for name, size in connection.exec_driver_sql(
            "SELECT coalesce(m.tbl_name, s.name), sum(s.pgsize) FROM dbstat s"
            " LEFT JOIN sqlite_master m ON m.name = s.name GROUP BY 1").all()}
    return None  # SQLite built without dbstat


class Timed:
    """Times each housekeeping batch (its reads and its write) and every write transaction opened with
    `Store.transaction` (housekeeping's; `record` uses its own)."""

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

    def ms(self, name: str) -> dict[str, Any]:
        ordered = sorted(self.seconds[name])
        if not ordered:
            return {"median": None, "max": None, "batches": 0}
        return {"median": round(statistics.median(ordered) * 1000, 2),
                "p99": harness.ms(harness.percentile(ordered, 99)),
                "max": round(ordered[-1] * 1000, 2), "batches": len(ordered)}


def size_run(kind: str, run: harness.Run, args: argparse.Namespace, payloads: Payloads) -> dict[str, Any]:
    url = run.databases.new(kind, "size")
    harness.migrate(harness.caselink_env(url))
    store = Store(harness.sqlalchemy_url(url))
    timed, clock = Timed(store), [START]
    keeper = Housekeeper(store, args.retention * DAY, clock=lambda: clock[0])
    per_day, days = args.events // args.days, []
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
            days.append({"day": day + 1, "bytes": database_bytes(store, url),
                         "events": int(sql(store, "SELECT count(*) FROM events")),
                         "counted": report.counted, "pruned": report.deleted})
            if (day + 1) % 10 == 0:
                print(f"  {kind} day {day + 1}: {days[-1]['bytes'] / 1e6:.1f} MB, {days[-1]['events']} events")
        matched, links, tables = (sum(rule.matched for rule in store.rule_stats(None).values()),
                                  int(sql(store, "SELECT count(*) FROM links")), table_bytes(store))
    finally:
        store.dispose()
    settled, last = days[args.retention], days[-1]  # the first day after which every day prunes one
    return {"events_per_day": per_day, "days": days, "bytes_after_first_retention_day": settled["bytes"],
            "bytes_at_end": last["bytes"], "growth_after_retention": round(last["bytes"] / settled["bytes"], 3),
            "retained_events_at_end": last["events"], "bytes_per_retained_event": round(last["bytes"] / last["events"]),
            "links_at_end": links, "table_bytes_at_end": tables, "matched_counted_all_time": matched,
            "events_recorded": per_day * args.days,
            "insert_events_per_second": round(per_day * args.days / insert_seconds),
            "housekeeping_seconds_total": round(housekeeping_seconds, 2), "count_batch_ms": timed.ms("count"),
            "prune_batch_ms": timed.ms("prune"), "longest_prune_write_transaction_ms": round(longest_write * 1000, 2),
            "housekeeping_write_transaction_ms": timed.ms("write")}


def ack_run(kind: str, run: harness.Run, args: argparse.Namespace, payloads: Payloads) -> dict[str, Any]:
    seed = run.databases.new(kind, "seed")
    harness.migrate(harness.caselink_env(seed))
    store = Store(harness.sqlalchemy_url(seed))
    try:
        payloads.record(store, 10_000_000, args.backlog, time.time() - 40 * DAY, 1.0)
        while store.count_rule_stats(limit=5000, settle=0):  # already counted: only pruning differs
            pass
    finally:
        store.dispose()
    rounds: list[dict[str, Any]] = []
    for number in range(1, args.rounds + 1):
        measured: dict[str, Any] = {}
        for label in harness.rotated(["pruning", "not pruning"], number):
            url = run.databases.new(kind, "copy", template=seed)
            retention = "30d" if label == "pruning" else "3650d"
            env = harness.caselink_env(url, EVENT_RETENTION=retention, LOG_LEVEL="WARNING")
            server = run.serve(harness.Server(f"{kind}-{label.replace(' ', '-')}-{number}", env, run.workdir))
            try:
                m = harness.measure(server, args.generator_used, args, number, label)
            finally:
                run.stop(server)
            store = Store(harness.sqlalchemy_url(url))
            try:
                left = int(sql(store, "SELECT count(*) FROM events")) - m.accepted_total
            finally:
                store.dispose()
            measured[label] = {"acks_per_second": round(m.statuses.get("202", 0) / m.seconds, 1), "p99_ms": m.p99_ms,
                               "errors": m.errors, "old_events_pruned": args.backlog - left}
        measured["ratio"] = round(measured["pruning"]["acks_per_second"]
                                  / max(measured["not pruning"]["acks_per_second"], 1e-9), 3)
        rounds.append(measured)
        print(f"  {kind} round {number}: pruning {measured['pruning']['acks_per_second']}/s "
              f"({measured['pruning']['old_events_pruned']} pruned), not pruning "
              f"{measured['not pruning']['acks_per_second']}/s, ratio {measured['ratio']}")
    return {"backlog": args.backlog, "rounds": rounds, "median_ratio": median(r["ratio"] for r in rounds),
            "median_acks_pruning": median(r["pruning"]["acks_per_second"] for r in rounds),
            "median_acks_not_pruning": median(r["not pruning"]["acks_per_second"] for r in rounds)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events over the simulated days")
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--retention", type=int, default=30, help="EVENT_RETENTION in days")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--backlog", type=int, default=30_000, help="old events to prune during the ack A/B")
    parser.add_argument("--skip-size", action="store_true")
    parser.add_argument("--skip-acks", action="store_true")
    harness.add_load_options(parser, duration=6.0, warmup=1.0, rounds=3, connections=16)
    harness.add_run_options(parser, postgres=True)
    parser.set_defaults(generator="python")
    args = parser.parse_args(argv)
    if args.days <= args.retention:
        parser.error("--days must be more than --retention: growth is compared once the oldest days are pruned")
    args.generator_used = harness.generator_used(parser, args.generator)
    stores = harness.listed(parser, "--stores", args.stores, ("sqlite", "postgresql"))
    payloads = Payloads()
    size: dict[str, Any] = {}
    acks: dict[str, Any] = {}
    with harness.Run("retention", args, argv) as run:
        if "postgresql" in stores:
            run.databases.check_postgres()
        for kind in stores:
            if not args.skip_size:
                print(f"size: {args.events} events over {args.days} days, {args.retention}-day retention, {kind}")
                f = size[kind] = size_run(kind, run, args, payloads)
                print(f"  {kind}: {f['bytes_after_first_retention_day'] / 1e6:.1f} MB on day {args.retention + 1}, "
                      f"{f['bytes_at_end'] / 1e6:.1f} MB on day {args.days} (x{f['growth_after_retention']}); "
                      f"{f['bytes_per_retained_event']} bytes per retained event; housekeeping write transactions "
                      f"max {f['housekeeping_write_transaction_ms']['max']} ms")
            if not args.skip_acks:
                print(f"acks with and without pruning {args.backlog} old events, {kind}")
                acks[kind] = ack_run(kind, run, args, payloads)
                print(f"  {kind}: median ratio pruning / not pruning {acks[kind]['median_ratio']}")
    run.write(size=size, acks=acks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
