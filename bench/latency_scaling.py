"""Webhook-to-link latency with an idle queue (SQLite, PostgreSQL), and acknowledgements per second by web processes.

Part `latency`: caselink started with default settings (gunicorn.conf.py, WEB_CONCURRENCY
and WORKER_* unset) in these topologies, live against the fake Datadog:

  sqlite             one gunicorn instance on a SQLite file, its in-process delivery worker
  sqlite-1web        the same with WEB_CONCURRENCY=1 (the one setting changed): every webhook
                     then lands in the process that runs the delivery worker
  postgresql         as `sqlite`, on a PostgreSQL database (the worker also wakes on LISTEN/NOTIFY)
  postgresql-worker  IN_PROCESS_WORKER=false on the web side, and `flask --app app worker`

Webhooks go one at a time, each on a new connection (as senders make them), each a new
incident naming a case, so each plans one new link; the next is sent only after the fake
recorded the previous link's creation and a random pause (--pause) has passed, so the queue
is idle every time. Latency is from just before the request is sent to the moment the fake
recorded the POST /api/v2/cases/link that created the link (the fake's own `at` timestamp;
both clocks are this machine's). The topologies take turns, webhook by webhook.

Part `scaling`: acknowledgements per second on PostgreSQL with 1, 2 and 4 web processes
(WEB_CONCURRENCY), 32 keep-alive connections, the load generator and method of
bench/ack_throughput.py (a new event per request; warm-up, then a fixed window; the
configurations take turns over the rounds). IN_PROCESS_WORKER=false with Datadog keys
(links are queued and NOTIFY sent, as in production, but nothing delivers), or --scaling-dry-run.

    python bench/latency_scaling.py [--parts latency,scaling] [--webhooks 200] [--rounds 3] [--duration 10]

See bench/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import harness
from ack_throughput import Bodies
from ack_throughput import IdCounter
from ack_throughput import Measurement
from ack_throughput import PythonGenerator
from ack_throughput import WrkGenerator
from ack_throughput import default_fixture
from harness import WEBHOOK_SECRET
from harness import Databases
from harness import Fake
from harness import Process
from harness import median
from harness import percentile

ALL_PARTS = ("latency", "scaling")
ALL_TOPOLOGIES = ("sqlite", "sqlite-1web", "postgresql", "postgresql-worker")
CREATE_PATH = "/api/v2/cases/link"
CASES = ["OPS-42", "OPS-50", "SEC-7"]  # the fake knows these from the start


# -- part 1: latency ------------------------------------------------------------------


class Stack:
    """One topology: a database, a gunicorn instance and, for postgresql-worker, a worker process."""

    def __init__(self, name: str, database_url: str, port: int, processes: list[Process]) -> None:
        self.name = name
        self.database_url = database_url
        self.port = port
        self.processes = processes
        self.latencies: list[float] = []
        self.acks: list[float] = []
        # From the answer (202) to the worker's first Datadog call, and from that call to the creation.
        self.to_first_call: list[float] = []
        self.first_call_to_create: list[float] = []
        self.lost = 0

    def check_running(self) -> None:
        for process in self.processes:
            if not process.running:
                raise RuntimeError(f"{process.name} exited:\n{process.logs()}")


def start_stack(
    name: str, args: argparse.Namespace, fake: Fake, databases: Databases, workdir: Path, processes: list[Process]
) -> Stack:
    store = "sqlite" if name.startswith("sqlite") else "postgresql"
    database_url = databases.new(store, name)
    overrides = {
        "sqlite-1web": {"WEB_CONCURRENCY": "1"},
        "postgresql-worker": {"IN_PROCESS_WORKER": "false"},
    }.get(name, {})
    env = harness.caselink_env(database_url, fake.url, **overrides)
    harness.migrate(env)
    own: list[Process] = []
    web, port = harness.web(f"web-{name}", env, workdir)
    processes.append(web)
    own.append(web)
    if name == "postgresql-worker":
        worker = harness.worker(f"worker-{name}", env, workdir)
        processes.append(worker)
        own.append(worker)
    return Stack(name, database_url, port, own)


def send_one(stack: Stack, fake: Fake, case: str, timeout: float) -> dict[str, float | None]:
    """One webhook on a new connection: ack, webhook-to-creation (None if none came) and where the time went.

    The queue is idle and one webhook is in flight at a time, so every Datadog call the
    fake records after this one is sent is for this webhook's link.
    """
    incident = str(uuid.uuid4())
    body = json.dumps(
        {
            "event": "incident.created",
            "id": f"latency-{incident}",
            "incident": {"id": incident, "title": f"Latency probe, see {case}", "severity": "SEV-2"},
        }
    ).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {WEBHOOK_SECRET}"}
    since = fake.summary()["requests"]
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    try:
        sent = time.time()
        connection.request("POST", "/webhooks/datadog", body=body, headers=headers)
        answer = connection.getresponse()
        answer.read()
        acked = time.time()
    finally:
        connection.close()
    if answer.status != 202:
        raise RuntimeError(f"{stack.name} answered {answer.status} to a new webhook")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = fake.requests(since)
        for row in rows:
            link = row.get("link") or {}
            if row["path"] == CREATE_PATH and link.get("parent_entity_id") == incident and row["status"] == 201:
                return {
                    "ack": acked - sent,
                    "latency": row["at"] - sent,
                    "to_first_call": rows[0]["at"] - acked,
                    "first_call_to_create": row["at"] - rows[0]["at"],
                }
        # Polling only finds the record; the fake's timestamp is what is measured.
        time.sleep(0.01)
    return {"ack": acked - sent, "latency": None}


def run_latency(
    args: argparse.Namespace, fake: Fake, databases: Databases, workdir: Path, processes: list[Process]
) -> dict[str, Any]:
    stacks = [start_stack(name, args, fake, databases, workdir, processes) for name in args.topologies]
    for stack in stacks:
        print(f"started {stack.name} on http://127.0.0.1:{stack.port}", flush=True)
    pick = random.Random(args.seed)
    # Warm-up: every process resolves its case keys once and opens its connections.
    for stack in stacks:
        for number in range(args.latency_warmup):
            send_one(stack, fake, CASES[number % len(CASES)], args.link_timeout)
            time.sleep(args.pause)
    print(f"warm-up done ({args.latency_warmup} webhooks each); measuring {args.webhooks} each", flush=True)
    for number in range(args.webhooks):
        shift = number % len(stacks)
        for stack in stacks[shift:] + stacks[:shift]:
            stack.check_running()
            measured = send_one(stack, fake, CASES[number % len(CASES)], args.link_timeout)
            stack.acks.append(measured["ack"] or 0.0)
            if measured["latency"] is None:
                stack.lost += 1
            else:
                stack.latencies.append(measured["latency"])
                stack.to_first_call.append(measured["to_first_call"] or 0.0)
                stack.first_call_to_create.append(measured["first_call_to_create"] or 0.0)
            time.sleep(pick.uniform(args.pause / 2, args.pause * 3 / 2))
        if (number + 1) % 50 == 0:
            progress = ", ".join(
                f"{s.name} p50 {_ms(percentile(sorted(s.latencies), 50))} ms" for s in stacks if s.latencies
            )
            print(f"  {number + 1}/{args.webhooks}: {progress}", flush=True)
    results = {}
    for stack in stacks:
        latencies, acks = sorted(stack.latencies), sorted(stack.acks)
        results[stack.name] = {
            "webhooks": len(stack.acks),
            "links_seen": len(latencies),
            "lost": stack.lost,
            "p50_ms": _ms(percentile(latencies, 50)),
            "p90_ms": _ms(percentile(latencies, 90)),
            "p99_ms": _ms(percentile(latencies, 99)),
            "max_ms": _ms(latencies[-1] if latencies else None),
            "mean_ms": _ms(sum(latencies) / len(latencies) if latencies else None),
            "over_100ms": sum(1 for x in latencies if x > 0.1),
            "ack_p50_ms": _ms(percentile(acks, 50)),
            "ack_p99_ms": _ms(percentile(acks, 99)),
            "ack_to_first_call_p50_ms": _ms(percentile(sorted(stack.to_first_call), 50)),
            "ack_to_first_call_p99_ms": _ms(percentile(sorted(stack.to_first_call), 99)),
            "first_call_to_create_p50_ms": _ms(percentile(sorted(stack.first_call_to_create), 50)),
            "first_call_to_create_p99_ms": _ms(percentile(sorted(stack.first_call_to_create), 99)),
            "latencies_ms": [_ms(x) for x in stack.latencies],
        }
    return results


# -- part 2: acknowledgements per second by web processes ----------------------------


def run_scaling(
    args: argparse.Namespace, fake: Fake | None, databases: Databases, workdir: Path, processes: list[Process]
) -> dict[str, Any]:
    targets: dict[int, dict[str, Any]] = {}
    for workers in args.web_processes:
        database_url = databases.new("postgresql", f"web{workers}")
        settings: dict[str, Any] = {"WEB_CONCURRENCY": workers}
        if args.threads:
            settings["GUNICORN_THREADS"] = args.threads
        if args.scaling_dry_run:
            env = harness.caselink_env(database_url, None, **settings)
        else:
            assert fake is not None
            env = harness.caselink_env(database_url, fake.url, IN_PROCESS_WORKER="false", **settings)
        harness.migrate(env)
        web, port = harness.web(f"web-{workers}proc", env, workdir)
        processes.append(web)
        targets[workers] = {"process": web, "port": port, "database_url": database_url}
        print(f"started WEB_CONCURRENCY={workers} on http://127.0.0.1:{port}", flush=True)
    ids = IdCounter()
    generators = {}
    for workers, target in targets.items():
        bodies = Bodies(args.fixture, target["port"])
        if args.generator_used == "wrk":
            generators[workers] = WrkGenerator(args.connections, args.wrk_threads, bodies, workdir)
        else:
            generators[workers] = PythonGenerator(args.connections, bodies, ids)
    print(f"generator: {next(iter(generators.values())).describe()}", flush=True)
    measurements: list[Measurement] = []
    spreads: dict[tuple[int, int], list[int] | None] = {}
    order = list(targets)
    for round_number in range(1, args.rounds + 1):
        shift = (round_number - 1) % len(order)
        for workers in order[shift:] + order[:shift]:
            target = targets[workers]
            process: Process = target["process"]

            def probe(process: Process = process, url: str = target["database_url"]) -> float | None:
                own, backends = process.cpu_seconds(), harness.postgres_backend_cpu(url)
                return None if own is None or backends is None else own + backends

            loadavg = list(os.getloadavg())
            with ConnectionSampler(target["port"], args.warmup) as sampler:
                result = generators[workers].run(target["port"], args.warmup, args.duration, probe)
            spread = sampler.spread(workers)
            spreads[(workers, round_number)] = spread
            if not process.running:
                raise RuntimeError(f"WEB_CONCURRENCY={workers} died:\n{process.logs()}")
            m = Measurement.from_run(f"web-{workers}", round_number, generators[workers].name, result, loadavg)
            measurements.append(m)
            print(
                f"round {round_number} WEB_CONCURRENCY={workers}: {m.rps:>7.0f} req/s  p50 {m.p50_ms} ms  "
                f"p99 {m.p99_ms} ms  errors {m.errors}  server+PostgreSQL CPU "
                f"{_show(m.server_cpu_ms_per_request, '.3f')} ms/req  connections per process "
                f"{'/'.join(map(str, spread)) if spread else '-'}  load average {loadavg[0]:.2f}",
                flush=True,
            )
    checks = {
        workers: store_check(target["database_url"], [m for m in measurements if m.target == f"web-{workers}"], args)
        for workers, target in targets.items()
    }
    summary: dict[str, Any] = {}
    base = None
    for workers in order:
        rows = [m for m in measurements if m.target == f"web-{workers}"]
        values = {
            "rps_median": median([m.rps for m in rows]),
            "rps_rounds": [m.rps for m in rows],
            "p50_ms_median": median([m.p50_ms for m in rows]),
            "p99_ms_median": median([m.p99_ms for m in rows]),
            "errors": sum(m.errors for m in rows),
            "server_and_postgres_cpu_ms_per_request_median": median([m.server_cpu_ms_per_request for m in rows]),
            "generator_cpu_share_median": median([m.generator_cpu_share for m in rows]),
        }
        if base is None:
            base = rows
        values["connections_per_process_rounds"] = [spreads.get((workers, m.round)) for m in rows]
        values["scaling_vs_first"] = round(values["rps_median"] / median([m.rps for m in base]), 3)
        values["scaling_rounds"] = [round(m.rps / b.rps, 3) for m in rows for b in base if b.round == m.round and b.rps]
        summary[str(workers)] = values
    return {
        "summary": summary,
        "store_checks": {str(k): v for k, v in checks.items()},
        "rounds": [{**asdict(m), "server_cpu_ms_per_request": m.server_cpu_ms_per_request} for m in measurements],
    }


class ConnectionSampler:
    """Which gunicorn process holds each load connection, from `ss` once a second during the measurement.

    gunicorn's processes accept from one shared socket, and a keep-alive connection stays with
    the process that accepted it; when one process takes most of them, the others idle.
    """

    def __init__(self, port: int, warmup: float) -> None:
        self.port = port
        self.warmup = warmup
        self.samples: list[list[int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ConnectionSampler:
        if shutil.which("ss"):
            self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        # Skip the warm-up (wrk runs it as a separate run, with connections of its own).
        if self._stop.wait(self.warmup + 1.5):
            return
        while not self._stop.is_set():
            result = subprocess.run(
                ["ss", "-tnpH", "state", "established", f"( sport = :{self.port} )"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            counts = Counter(re.findall(r"pid=(\d+)", result.stdout))
            if counts:
                self.samples.append(sorted(counts.values(), reverse=True))
            self._stop.wait(1.0)

    def spread(self, processes: int) -> list[int] | None:
        """The sample in the middle of the measurement: connections per process, most first, 0 for idle ones."""
        if not self.samples:
            return None
        middle = self.samples[len(self.samples) // 2]
        return middle + [0] * (processes - len(middle))


def store_check(database_url: str, rows: list[Measurement], args: argparse.Namespace) -> dict[str, Any]:
    """Events stored against 202s received, as bench/ack_throughput.py checks them."""
    import psycopg

    accepted = sum(m.accepted_total for m in rows)
    unanswered = sum(m.unanswered for m in rows)
    deadline, previous = time.monotonic() + 30, -1
    while True:
        with psycopg.connect(database_url) as connection:
            stored = connection.execute("SELECT count(*) FROM events").fetchone()[0]  # type: ignore[index]
        if stored == previous or time.monotonic() > deadline:
            break
        previous = stored
        time.sleep(0.5)
    if args.generator_used == "wrk":
        ok, rule = accepted <= stored <= accepted + unanswered, f"202s <= stored <= 202s + {unanswered}"
    else:
        ok, rule = stored == accepted, "stored == 202s"
    return {"events_stored": stored, "answers_202": accepted, "rule": rule, "ok": ok}


# -- reporting ------------------------------------------------------------------------


def print_latency(results: dict[str, Any], args: argparse.Namespace) -> None:
    print()
    print(
        f"webhook-to-link latency, idle queue, {args.webhooks} webhooks each "
        f"(pause {args.pause / 2:g}-{args.pause * 3 / 2:g} s between webhooks)"
    )
    print(
        f"{'topology':<20}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'>100 ms':>9}{'lost':>6}"
        "   parts, p50 (p99) ms: 202 answered | 202 to first Datadog call | first call to creation"
    )
    for name, r in results.items():
        parts = " | ".join(
            f"{_show(r[f'{part}_p50_ms'], '.1f')} ({_show(r[f'{part}_p99_ms'], '.1f')})"
            for part in ("ack", "ack_to_first_call", "first_call_to_create")
        )
        print(
            f"{name:<20}{_show(r['p50_ms'], '.1f'):>9}{_show(r['p90_ms'], '.1f'):>9}{_show(r['p99_ms'], '.1f'):>9}"
            f"{_show(r['max_ms'], '.1f'):>9}{r['over_100ms']:>9}{r['lost']:>6}   {parts}"
        )


def print_scaling(result: dict[str, Any], args: argparse.Namespace) -> None:
    print()
    mode = "dry-run" if args.scaling_dry_run else "IN_PROCESS_WORKER=false, Datadog keys set"
    print(f"acknowledgements per second on PostgreSQL, {args.connections} connections, {mode}")
    print(
        f"{'WEB_CONCURRENCY':<17}{'req/s':>8}  {'rounds':<22}{'vs 1st':>7}  {'per round':<20}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'errors':>8}{'CPU ms/req':>12}{'gen CPU':>9}  connections per process"
    )
    for workers, v in result["summary"].items():
        print(
            f"{workers:<17}{v['rps_median']:>8.0f}  {'/'.join(f'{x:.0f}' for x in v['rps_rounds']):<22}"
            f"{v['scaling_vs_first']:>7.2f}  {'/'.join(f'{x:.2f}' for x in v['scaling_rounds']):<20}"
            f"{_show(v['p50_ms_median'], '.2f'):>8}{_show(v['p99_ms_median'], '.2f'):>8}{v['errors']:>8}"
            f"{_show(v['server_and_postgres_cpu_ms_per_request_median'], '.3f'):>12}"
            f"{_show(v['generator_cpu_share_median'], '.0%'):>9}  "
            + ", ".join("/".join(map(str, c)) if c else "-" for c in v["connections_per_process_rounds"])
        )
    for workers, check in result["store_checks"].items():
        mark = "ok" if check["ok"] else "MISMATCH"
        print(
            f"store check WEB_CONCURRENCY={workers}: {check['events_stored']} events stored, "
            f"{check['answers_202']} answers 202 [{check['rule']}: {mark}]"
        )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _show(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# -- main -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(ALL_PARTS), help="comma-separated: latency, scaling")
    parser.add_argument("--topologies", default=",".join(ALL_TOPOLOGIES), help="latency: " + ", ".join(ALL_TOPOLOGIES))
    parser.add_argument("--webhooks", type=int, default=200, help="latency: webhooks measured per topology")
    parser.add_argument("--latency-warmup", type=int, default=5, help="latency: webhooks per topology before measuring")
    parser.add_argument("--pause", type=float, default=0.2, help="latency: mean pause between webhooks, in seconds")
    parser.add_argument("--link-timeout", type=float, default=10.0, help="latency: seconds to wait for each link")
    parser.add_argument("--seed", type=int, default=5, help="latency: seed of the random pauses")
    parser.add_argument("--web-processes", default="1,2,4", help="scaling: WEB_CONCURRENCY values")
    parser.add_argument("--threads", type=int, help="scaling: GUNICORN_THREADS (default: caselink's)")
    parser.add_argument("--duration", type=float, default=10.0, help="scaling: seconds measured per round")
    parser.add_argument("--warmup", type=float, default=2.0, help="scaling: seconds of load before each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="scaling: rounds; the configurations take turns")
    parser.add_argument("--connections", type=int, default=32, help="scaling: concurrent keep-alive connections")
    parser.add_argument("--generator", choices=("auto", "python", "wrk"), default="auto")
    parser.add_argument("--wrk-threads", type=int, default=min(os.cpu_count() or 2, 4))
    parser.add_argument("--fixture", type=Path, default=default_fixture())
    parser.add_argument("--scaling-dry-run", action="store_true", help="scaling: no Datadog keys instead")
    parser.add_argument("--postgres-url", default=harness.DEFAULT_POSTGRES, help="server to create databases on")
    parser.add_argument("--output", type=Path, help="JSON results file (default: bench/results/latency-<time>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (SQLite files, logs)")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.topologies = [t.strip() for t in args.topologies.split(",") if t.strip()]
    args.web_processes = [int(w) for w in args.web_processes.split(",") if w.strip()]
    if not args.parts or not set(args.parts) <= set(ALL_PARTS):
        parser.error(f"--parts: choose from {', '.join(ALL_PARTS)}")
    if not args.topologies or not set(args.topologies) <= set(ALL_TOPOLOGIES):
        parser.error(f"--topologies: choose from {', '.join(ALL_TOPOLOGIES)}")
    if args.generator == "wrk" and shutil.which("wrk") is None:
        parser.error("--generator wrk: wrk is not installed (apt-get install wrk), use --generator python")
    args.generator_used = args.generator if args.generator != "auto" else ("wrk" if shutil.which("wrk") else "python")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="caselink-bench-latency-"))
    databases = Databases(workdir, args.postgres_url)
    if "scaling" in args.parts or any(t.startswith("postgresql") for t in args.topologies):
        databases.check_postgres()
    processes: list[Process] = []
    fake = None
    if "latency" in args.parts or not args.scaling_dry_run:
        fake = Fake(workdir, CASES)
        processes.append(fake.process)
    document: dict[str, Any] = {
        "benchmark": "webhook-to-link latency with an idle queue; acknowledgements per second by web processes",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": harness.machine(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "output"},
    }
    print(f"machine: {document['machine']}", flush=True)
    with harness.terminate_on_sigterm():
        with harness.in_workdir(workdir, keep=args.keep):
            with harness.cleanup(processes, databases):
                if fake is not None:
                    fake.start()
                if "latency" in args.parts:
                    assert fake is not None
                    document["latency"] = run_latency(args, fake, databases, workdir, processes)
                    print_latency(document["latency"], args)
                    # The latency stacks stop before the throughput runs, so they take no CPU from them.
                    for process in [p for p in processes if p is not fake.process]:
                        process.stop()
                        processes.remove(process)
                    databases.drop_all()
                if "scaling" in args.parts:
                    document["scaling"] = run_scaling(args, fake, databases, workdir, processes)
    if "latency" in document:
        print_latency(document["latency"], args)
    if "scaling" in document:
        print_scaling(document["scaling"], args)
    path = harness.write_results("latency", document, args.output)
    print(f"results: {harness.shown(path)}")
    failed = [k for k, c in document.get("scaling", {}).get("store_checks", {}).items() if not c["ok"]]
    lost = [k for k, r in document.get("latency", {}).items() if r["lost"]]
    return 1 if failed or lost else 0


if __name__ == "__main__":
    sys.exit(main())
