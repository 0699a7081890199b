"""Webhook-to-link latency with an idle queue (SQLite, PostgreSQL), and acknowledgements per second by web processes.

Part `latency`: one webhook at a time, each on a new connection and planning a new link, to caselink in
four topologies (sqlite, sqlite-1web, postgresql, postgresql-worker), live against the fake Datadog; from
sending to the fake's creation of the link. Part `scaling`: acks/s on PostgreSQL with 1, 2, 4 web processes.

    python bench/latency_scaling.py [--parts latency,scaling] [--webhooks 200] [--rounds 3] [--duration 10]

See bench/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import time
import uuid
from typing import Any

import harness
from harness import median
from harness import ms
from harness import percentile
from harness import show

TOPOLOGIES = ("sqlite", "sqlite-1web", "postgresql", "postgresql-worker")
CASES = ["OPS-42", "OPS-50", "SEC-7"]  # the fake knows these from the start
PARTS = ("ack", "ack_to_first_call", "first_call_to_create")  # where the time goes


def send_one(port: int, fake: harness.Fake, case: str, timeout: float) -> dict[str, float]:
    """One webhook on a new connection: the 202's time, and (if the link came) webhook-to-creation and its parts.

    One webhook is in flight and the queue is idle, so every Datadog call the fake records after
    this one is sent is for this webhook's link.
    """
    incident = str(uuid.uuid4())
    body = json.dumps({"event": "incident.created", "id": f"latency-{incident}", "incident": {
        "id": incident, "title": f"Latency probe, see {case}", "severity": "SEV-2"}})
    since = fake.get("/_fake/summary")["requests"]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        sent = time.time()
        connection.request("POST", "/webhooks/datadog", body=body, headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {harness.WEBHOOK_SECRET}"})
        answer = connection.getresponse()
        answer.read()
        acked = time.time()
    finally:
        connection.close()
    if answer.status != 202:
        raise RuntimeError(f"port {port} answered {answer.status} to a new webhook")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = fake.requests(since)
        for row in rows:
            if row["path"] == "/api/v2/cases/link" and row["status"] == 201 \
                    and (row.get("link") or {}).get("parent_entity_id") == incident:
                return {"ack": acked - sent, "latency": row["at"] - sent, "ack_to_first_call": rows[0]["at"] - acked,
                        "first_call_to_create": row["at"] - rows[0]["at"]}
        time.sleep(0.01)  # polling only finds the record; the fake's timestamp is what is measured
    return {"ack": acked - sent}


def run_latency(args: argparse.Namespace, run: harness.Run, fake: harness.Fake) -> dict[str, Any]:
    stacks: dict[str, tuple[harness.Server, list[harness.Process]]] = {}
    for name in args.topologies:
        settings = {"sqlite-1web": {"WEB_CONCURRENCY": "1"}, "postgresql-worker": {"IN_PROCESS_WORKER": "false"}}
        server, url = harness.caselink(name, run, name.split("-")[0], fake.url, **settings.get(name, {}))
        workers = [run.started(harness.worker(f"worker-{name}", server.env, run.workdir))] \
            if name == "postgresql-worker" else []
        stacks[name] = (server, workers)
        print(f"started {name} on {server.url}", flush=True)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in stacks}
    for server, _ in stacks.values():  # every process resolves its case keys once, opens its connections
        for number in range(args.latency_warmup):
            send_one(server.port, fake, CASES[number % len(CASES)], args.link_timeout)
            time.sleep(args.pause)
    print(f"warm-up done ({args.latency_warmup} webhooks each); measuring {args.webhooks} each", flush=True)
    pick = random.Random(args.seed)
    for number in range(args.webhooks):
        for name in harness.rotated(list(stacks), number + 1):
            server, workers = stacks[name]
            for process in [server.process, *workers]:
                if not process.running:
                    raise RuntimeError(f"{process.name} exited:\n{process.logs()}")
            samples[name].append(send_one(server.port, fake, CASES[number % len(CASES)], args.link_timeout))
            time.sleep(pick.uniform(args.pause / 2, args.pause * 3 / 2))
        if (number + 1) % 50 == 0:
            print(f"  {number + 1}/{args.webhooks}: " + ", ".join(
                f"{n} p50 {ms(percentile(sorted(s['latency'] for s in rows if 'latency' in s), 50))} ms"
                for n, rows in samples.items()), flush=True)
    results = {}
    for name, rows in samples.items():
        values = {part: sorted(s[part] for s in rows if part in s) for part in ("latency", *PARTS)}
        latencies = values["latency"]
        results[name] = {
            "webhooks": len(rows), "links_seen": len(latencies), "lost": len(rows) - len(latencies),
            **{f"p{q}_ms": ms(percentile(latencies, q)) for q in (50, 90, 99)},
            "max_ms": ms(latencies[-1] if latencies else None),
            "mean_ms": ms(sum(latencies) / len(latencies) if latencies else None),
            "over_100ms": sum(x > 0.1 for x in latencies),
            **{f"{part}_p{q}_ms": ms(percentile(values[part], q)) for part in PARTS for q in (50, 99)},
            "latencies_ms": [ms(s["latency"]) for s in rows if "latency" in s]}
    for server, workers in stacks.values():  # stopped before the throughput runs, so they take no CPU from them
        run.stop(server, *workers)
    return results


def run_scaling(args: argparse.Namespace, run: harness.Run, fake: harness.Fake | None) -> dict[str, Any]:
    servers = {}
    for workers in args.web_processes:
        servers[workers] = harness.caselink(
            f"web-{workers}proc", run, "postgresql", None if args.scaling_dry_run else fake.url,  # type: ignore[union-attr]
            WEB_CONCURRENCY=workers, GUNICORN_THREADS=args.threads,
            IN_PROCESS_WORKER=None if args.scaling_dry_run else "false")
        print(f"started WEB_CONCURRENCY={workers} on {servers[workers][0].url}", flush=True)
    print(f"generator: {harness.describe_generator(args.generator_used, args)}", flush=True)
    measurements: list[harness.Measurement] = []
    for number in range(1, args.rounds + 1):
        for workers in harness.rotated(args.web_processes, number):
            server, url = servers[workers]

            def cpu(server: harness.Server = server, url: str = url) -> float | None:
                own, backends = server.process.cpu_seconds(), harness.postgres_backend_cpu(url)
                return None if own is None or backends is None else own + backends

            m = harness.measure(server, args.generator_used, args, number, str(workers), processes=workers, cpu=cpu)
            measurements.append(m)
            print(f"round {number} WEB_CONCURRENCY={workers}: {m.rps:>7.0f} req/s  p50 {m.p50_ms} ms  p99 {m.p99_ms} "
                  f"ms  errors {m.errors}  server+PostgreSQL CPU {show(m.server_cpu_ms_per_request, '.3f')} ms/req  "
                  f"connections per process {harness.joined(m.connections_per_worker, 'd') or '-'}  load average "
                  f"{m.loadavg_before[0]:.2f}", flush=True)
    summary, checks = {}, {}
    first = [m for m in measurements if m.target == str(args.web_processes[0])]
    for workers, (server, url) in servers.items():
        rows = [m for m in measurements if m.target == str(workers)]
        checks[str(workers)] = harness.store_check(server.url, url, sum(m.accepted_total for m in rows),
                                                   sum(m.unanswered for m in rows), args.generator_used == "wrk")
        summary[str(workers)] = {
            "rps_median": median(m.rps for m in rows), "rps_rounds": [m.rps for m in rows],
            "p50_ms_median": median(m.p50_ms for m in rows), "p99_ms_median": median(m.p99_ms for m in rows),
            "errors": sum(m.errors for m in rows),
            "server_and_postgres_cpu_ms_per_request_median": median(m.server_cpu_ms_per_request for m in rows),
            "generator_cpu_share_median": median(m.generator_cpu_share for m in rows),
            "connections_per_process_rounds": [m.connections_per_worker for m in rows],
            "scaling_vs_first": round(median(m.rps for m in rows) / median(m.rps for m in first), 3),  # type: ignore[operator]
            "scaling_rounds": [round(m.rps / b.rps, 3) for m in rows for b in first if b.round == m.round and b.rps]}
    return {"summary": summary, "store_checks": checks, "rounds": measurements}


def print_latency(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nwebhook-to-link latency, idle queue, {args.webhooks} webhooks each (pause {args.pause / 2:g}-"
          f"{args.pause * 3 / 2:g} s between webhooks)")
    print(f"{'topology':<20}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'>100 ms':>9}{'lost':>6}"
          "   parts, p50 (p99) ms: 202 answered | 202 to first Datadog call | first call to creation")
    for name, r in results.items():
        parts = " | ".join(f"{show(r[f'{p}_p50_ms'], '.1f')} ({show(r[f'{p}_p99_ms'], '.1f')})" for p in PARTS)
        print(f"{name:<20}" + "".join(f"{show(r[k], '.1f'):>9}" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))
              + f"{r['over_100ms']:>9}{r['lost']:>6}   {parts}")


def print_scaling(result: dict[str, Any], args: argparse.Namespace) -> None:
    mode = "dry-run" if args.scaling_dry_run else "IN_PROCESS_WORKER=false, Datadog keys set"
    print(f"\nacknowledgements per second on PostgreSQL, {args.connections} connections, {mode}")
    print(f"{'WEB_CONCURRENCY':<17}{'req/s':>8}  {'rounds':<22}{'vs 1st':>7}  {'per round':<20}{'p50 ms':>8}"
          f"{'p99 ms':>8}{'errors':>8}{'CPU ms/req':>12}{'gen CPU':>9}  connections per process")
    for workers, v in result["summary"].items():
        print(f"{workers:<17}{v['rps_median']:>8.0f}  {harness.joined(v['rps_rounds']):<22}"
              f"{v['scaling_vs_first']:>7.2f}"
              f"  {harness.joined(v['scaling_rounds'], '.2f'):<20}{show(v['p50_ms_median'], '.2f'):>8}"
              f"{show(v['p99_ms_median'], '.2f'):>8}{v['errors']:>8}"
              f"{show(v['server_and_postgres_cpu_ms_per_request_median'], '.3f'):>12}"
              f"{show(v['generator_cpu_share_median'], '.0%'):>9}  "
              + ", ".join(harness.joined(c, "d") or "-" for c in v["connections_per_process_rounds"]))
    for workers, check in result["store_checks"].items():
        harness.print_store_check(f"WEB_CONCURRENCY={workers}", check)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="latency,scaling", help="comma-separated: latency, scaling")
    parser.add_argument("--topologies", default=",".join(TOPOLOGIES), help="latency: " + ", ".join(TOPOLOGIES))
    parser.add_argument("--webhooks", type=int, default=200, help="latency: webhooks measured per topology")
    parser.add_argument("--latency-warmup", type=int, default=5, help="latency: webhooks per topology before measuring")
    parser.add_argument("--pause", type=float, default=0.2, help="latency: mean pause between webhooks, in seconds")
    parser.add_argument("--link-timeout", type=float, default=10.0, help="latency: seconds to wait for each link")
    parser.add_argument("--seed", type=int, default=5, help="latency: seed of the random pauses")
    parser.add_argument("--web-processes", default="1,2,4", help="scaling: WEB_CONCURRENCY values")
    parser.add_argument("--threads", type=int, help="scaling: GUNICORN_THREADS (default: caselink's)")
    parser.add_argument("--scaling-dry-run", action="store_true", help="scaling: no Datadog keys instead")
    harness.add_load_options(parser, duration=10.0, warmup=2.0, rounds=3)
    harness.add_run_options(parser, postgres=True)
    args = parser.parse_args(argv)
    args.parts = harness.listed(parser, "--parts", args.parts, ("latency", "scaling"))
    args.topologies = harness.listed(parser, "--topologies", args.topologies, TOPOLOGIES)
    args.web_processes = [int(w) for w in args.web_processes.split(",") if w.strip()]
    args.generator_used = harness.generator_used(parser, args.generator)
    results: dict[str, Any] = {}
    with harness.Run("latency", args, argv) as run:
        if "scaling" in args.parts or any(t.startswith("postgresql") for t in args.topologies):
            run.databases.check_postgres()
        print(f"machine: {run.document['machine']}", flush=True)
        fake = None
        if "latency" in args.parts or not args.scaling_dry_run:
            fake = harness.Fake(run.workdir, CASES).start()
            run.started(fake.process)
        if "latency" in args.parts:
            results["latency"] = run_latency(args, run, fake)  # type: ignore[arg-type]
            print_latency(results["latency"], args)
            run.databases.drop_all()
        if "scaling" in args.parts:
            results["scaling"] = run_scaling(args, run, fake)
    if "latency" in results:
        print_latency(results["latency"], args)
    if "scaling" in results:
        print_scaling(results["scaling"], args)
    run.write(**results)
    failed = [k for k, c in results.get("scaling", {}).get("store_checks", {}).items() if not c["ok"]]
    lost = [k for k, r in results.get("latency", {}).items() if r["lost"]]
    return 1 if failed or lost else 0


if __name__ == "__main__":
    sys.exit(main())
