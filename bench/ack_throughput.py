"""Webhook acknowledgements per second: caselink under gunicorn next to a bare Flask endpoint.

The bare app (bench/bare_app.py), `stored` (the bare app committing each body to SQLite before
its 202), caselink dry-run, and caselink live against the fake Datadog run with the same gunicorn
settings, taking turns over rounds, each started afresh every round, once per environment
(deployed, plain). Prints requests/s, latency, errors, CPU per request, how the connections were
split between workers, the ratio caselink / bare (target: at least 0.85 at the median, no round
below 0.7) and caselink / stored; checks that caselink and `stored` stored one event per 202.

    python bench/ack_throughput.py [--duration 8] [--rounds 5] [--environments deployed,plain]
    python bench/ack_throughput.py --new-connections --targets bare,dry-run,gthread  # a connection per request
    python bench/ack_throughput.py --baseline 7197a0d   # also caselink live as it was when issue 17 was filed

See bench/README.md.
"""

from __future__ import annotations

import argparse
import runpy
import subprocess
import sys
from typing import Any

import harness
from harness import ENVIRONMENTS
from harness import LOPSIDED_SHARE
from harness import ROOT
from harness import Measurement
from harness import Server
from harness import median
from harness import show

TARGET_RATIO, TARGET_ROUND_RATIO = 0.85, 0.7
# stored: the bare app committing each body to SQLite before its 202 (bench/bare_app.py), a simple
# store-before-answering app (a reference, not a bound); gthread: dry-run under gunicorn's own worker,
# only when named.
TARGETS = ("bare", "stored", "dry-run", "live", "gthread", "baseline")  # baseline: live from --baseline's tree
LABELS = {"bare": "bare Flask 202", "dry-run": "caselink dry-run", "live": "caselink live",
          "gthread": "dry-run, gthread", "stored": "bare + durable write", "baseline": "caselink live then"}
BARE_APP = ("-c", "bench/gunicorn_bare_conf.py", "bench.bare_app:app")
# gunicorn settings that legitimately differ between the two configurations.
MAY_DIFFER = {"bind", "config", "default_proc_name", "check_config", "print_config"}
SHOWN = ("worker_class", "workers", "threads", "keepalive", "worker_connections", "backlog", "timeout", "reuse_port")


def gunicorn_settings(env: dict[str, str]) -> dict[str, Any]:
    """Ask gunicorn for caselink's and the bare app's resolved settings; refuse to compare if they differ."""
    configs = []
    for app in (("app:app",), BARE_APP):
        done = subprocess.run([sys.executable, "-m", "gunicorn", *app, "--print-config"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"gunicorn --print-config failed for {app[-1]}:\n{done.stdout}\n{done.stderr}")
        configs.append({k.strip(): v.strip() for k, _, v in (x.partition("=") for x in done.stdout.splitlines())})
    ours, bare = configs
    differ = [name for name in sorted(set(ours) | set(bare)) if ours.get(name) != bare.get(name)
              and name not in MAY_DIFFER and not (ours.get(name, "<")[0] == bare.get(name, "<")[0] == "<")]
    if differ:
        details = ", ".join(f"{n}: {ours.get(n)} vs {bare.get(n)}" for n in differ)
        raise RuntimeError(f"the bare app would not run with caselink's gunicorn settings: {details}")
    return {name: ours.get(name) for name in SHOWN}


def run_environment(args: argparse.Namespace, run: harness.Run, environment: str) -> dict[str, Any]:
    """Every target, every round, in one environment: measurements, store checks, gunicorn's settings."""
    args.environment = environment
    deployed = environment == "deployed"
    gunicorn = {"WEB_CONCURRENCY": args.workers, "GUNICORN_THREADS": args.threads,
                "GUNICORN_CMD_ARGS": args.gunicorn_args or None}  # read after the config file, for every target
    settings = gunicorn_settings(harness.caselink_env(f"sqlite:///{run.workdir / 'check.db'}", **gunicorn))
    print(f"\n== environment {environment}: {ENVIRONMENTS[environment]}")
    print("gunicorn, the same for every target: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    fake = harness.Fake(run.workdir).start() if {"live", "baseline"} & set(args.targets) else None
    if fake:
        run.started(fake.process)
    servers: dict[str, Server] = {}
    databases: dict[str, str] = {}
    for key in args.targets:
        if key in ("bare", "stored"):
            extra = {"BARE_DATABASE": run.workdir / f"{environment}-stored.db"} if key == "stored" else {}
            servers[key] = run.serve(Server(f"{environment}-{key}", harness.base_env(**gunicorn, **extra),
                                            run.workdir, deployed=deployed, app=BARE_APP))
        else:
            # The baseline: caselink live from an older tree, under that tree's own gunicorn.conf.py.
            servers[key], databases[key] = harness.caselink(
                f"{environment}-{key}", run, fake_url=fake.url if fake and key in ("live", "baseline") else None,
                deployed=deployed, root=args.baseline_tree if key == "baseline" else ROOT, **gunicorn)
            if key == "gthread":  # caselink as configured, but for gunicorn's own worker class
                servers[key].command[3:3] = ["--worker-class", "gthread"]
                servers[key].restart()
        print(f"started {LABELS[key]} on {servers[key].url}", flush=True)
    print(f"generator: {harness.describe_generator(args.generator_used, args)}")
    print(f"load: POST /webhooks/datadog with {args.fixture.name}, a new id per request; {args.warmup:g} s warm-up + "
          f"{args.duration:g} s measured, {args.rounds} rounds"
          + ("" if args.same_servers else ", every server started afresh each round"), flush=True)
    measurements: list[Measurement] = []
    for number in range(1, args.rounds + 1):
        order = harness.rotated(args.targets, number)
        if number > 1 and not args.same_servers:
            # A fresh service each round, as a deploy starts one: with gunicorn's own gthread worker, how it
            # shared out the connections at start was settled for the service's whole life.
            for key in order:
                servers[key].restart()
        for key in order:
            bodies = harness.Bodies(args.fixture, servers[key].port, args.new_connections)
            m = harness.measure(servers[key], args.generator_used, args, number, key, bodies, args.workers)
            measurements.append(m)
            split = harness.joined(m.connections_per_worker, "d") or "-"
            print(f"round {number} {LABELS[key]:<21} {m.rps:>8.0f} req/s  p50 {show(m.p50_ms, '.3f')} ms  p99 "
                  f"{show(m.p99_ms, '.3f')} ms  errors {m.errors}  statuses {m.statuses}  load average "
                  f"{m.loadavg_before[0]:.2f}  connections per worker {split}", flush=True)
    checks = {}
    for key, database_url in databases.items():
        rows = [m for m in measurements if m.target == key]
        live = key in ("live", "baseline")
        checks[key] = harness.store_check(servers[key].url, database_url, sum(m.accepted_total for m in rows),
                                          sum(m.unanswered for m in rows), args.generator_used == "wrk", live)
        if live and fake:
            # Every request names the same incident and case, so every one plans the same link: one creation.
            state = fake.get("/_fake/state")
            checks[key].update(fake_link_creations=state["creations"], fake_requests=state["requests"])
            checks[key]["ok"] = checks[key]["ok"] and state["creations"] == 1
    if "stored" in servers:
        rows = [m for m in measurements if m.target == "stored"]
        checks["stored"] = harness.stored_check(run.workdir / f"{environment}-stored.db",
                                                sum(m.accepted_total for m in rows), sum(m.unanswered for m in rows),
                                                args.generator_used == "wrk")
    for server in servers.values():
        run.stop(server)
    if fake:
        run.stop(fake.process)
    return {"description": ENVIRONMENTS[environment], "gunicorn": settings, "measurements": measurements,
            "store_checks": checks}


def summarise(measurements: list[Measurement], targets: list[str]) -> dict[str, Any]:
    """Per target: medians over the rounds, and the ratios to the bare app (and to stock gthread)."""
    by = {key: [m for m in measurements if m.target == key] for key in targets}
    summary: dict[str, Any] = {}
    for key, rows in by.items():
        summary[key] = {
            "rps_median": median(m.rps for m in rows), "rps_rounds": [m.rps for m in rows],
            "p50_ms_median": median(m.p50_ms for m in rows), "p99_ms_median": median(m.p99_ms for m in rows),
            "errors": sum(m.errors for m in rows), "requests_measured": sum(m.requests for m in rows),
            "server_cpu_ms_per_request_median": median(m.server_cpu_ms_per_request for m in rows),
            "generator_cpu_share_median": median(m.generator_cpu_share for m in rows),
            "lopsided_rounds": sum(m.lopsided for m in rows)}

    def per_round(key: str, other: str) -> list[tuple[Measurement, Measurement]]:
        return [(m, o) for m in by[key] for o in by.get(other, []) if o.round == m.round and o.rps]

    bare = summary.get("bare", {})
    for key, values in summary.items():
        if key == "bare" or not bare.get("rps_median"):
            continue
        pairs = per_round(key, "bare")  # the ratio within each round, where the two ran seconds apart
        balanced = [m.rps / b.rps for m, b in pairs if not m.lopsided and not b.lopsided]
        own, base = values["server_cpu_ms_per_request_median"], bare["server_cpu_ms_per_request_median"]
        values.update(ratio_to_bare=round(values["rps_median"] / bare["rps_median"], 3),
                      ratio_rounds=[round(m.rps / b.rps, 3) for m, b in pairs],
                      ratio_of_rounds_median=median(m.rps / b.rps for m, b in pairs),
                      ratio_balanced_rounds=[round(r, 3) for r in balanced],
                      ratio_balanced_rounds_median=median(balanced),
                      # The ratio to expect when the CPUs are the limit, least moved by other load on the machine.
                      cpu_ratio_to_bare=round(base / own, 3) if own and base else None)
    stored = summary.get("stored", {}).get("rps_median")
    for key in ("dry-run", "live", "baseline"):
        if stored and summary.get(key, {}).get("rps_median"):
            summary[key].update(ratio_to_stored=round(summary[key]["rps_median"] / stored, 3),
                                ratio_to_stored_rounds=[round(m.rps / f.rps, 3) for m, f in per_round(key, "stored")])
    if summary.get("gthread", {}).get("rps_median") and summary.get("dry-run", {}).get("rps_median"):
        summary["dry-run"].update(
            ratio_to_gthread=round(summary["dry-run"]["rps_median"] / summary["gthread"]["rps_median"], 3),
            ratio_to_gthread_rounds=[round(m.rps / g.rps, 3) for m, g in per_round("dry-run", "gthread")])
    return summary


def generator_ceiling(measurements: list[Measurement]) -> float | None:
    """Requests per CPU-second the generator spent against the bare app: what it could drive on one core."""
    rows = [m for m in measurements if m.target == "bare" and m.generator_cpu_seconds]
    return median(round(m.requests / m.generator_cpu_seconds) for m in rows)


def print_report(summary: dict[str, Any], measurements: list[Measurement], checks: dict[str, Any]) -> None:
    print(f"\n{'target':<21}{'req/s':>9}  {'rounds':<24}{'p50 ms':>8}{'p99 ms':>9}{'errors':>8}{'server CPU':>12}"
          f"{'gen CPU':>9}\n{'':<21}{'(median)':>9}  {'':<24}{'':>25}{'ms/req':>12}{'share':>9}")
    for key, v in summary.items():
        print(f"{LABELS[key]:<21}{v['rps_median']:>9.0f}  {harness.joined(v['rps_rounds']):<24}"
              f"{show(v['p50_ms_median'], '.2f'):>8}{show(v['p99_ms_median'], '.2f'):>9}{v['errors']:>8}"
              f"{show(v['server_cpu_ms_per_request_median'], '.3f'):>12}"
              f"{show(v['generator_cpu_share_median'], '.0%'):>9}")
    print()
    for key, v in summary.items():
        if key == "stored" and "ratio_to_bare" in v:
            print(f"ratio {LABELS[key]} / bare (req/s medians): {v['ratio_to_bare']:.2f}, a simple app whose 202 "
                  f"means stored; per round: {harness.joined(v['ratio_rounds'], '.2f', ', ')}; "
                  f"server CPU per request, bare / stored: {show(v['cpu_ratio_to_bare'], '.2f')}")
        elif "ratio_to_bare" in v:
            verdict = "meets the target" if v["ratio_to_bare"] >= TARGET_RATIO else "BELOW the target"
            print(f"ratio {LABELS[key]} / bare (req/s medians): {v['ratio_to_bare']:.2f}  ({verdict} of "
                  f"{TARGET_RATIO}); per round: {harness.joined(v['ratio_rounds'], '.2f', ', ')} (their median "
                  f"{show(v['ratio_of_rounds_median'], '.2f')}); server CPU per request, bare / {key}: "
                  f"{show(v['cpu_ratio_to_bare'], '.2f')}")
        if "ratio_to_stored" in v:
            print(f"ratio {LABELS[key]} / {LABELS['stored']} (req/s medians): {v['ratio_to_stored']:.2f}; per round: "
                  f"{harness.joined(v['ratio_to_stored_rounds'], '.2f', ', ')}")
        if "ratio_to_gthread" in v:
            print(f"ratio caselink's worker / stock gthread, dry-run (req/s medians): {v['ratio_to_gthread']:.2f}; "
                  f"per round: {harness.joined(v['ratio_to_gthread_rounds'], '.2f', ', ')}")
    lopsided = {key: v["lopsided_rounds"] for key, v in summary.items() if v["lopsided_rounds"]}
    if lopsided:
        print(f"rounds in which one gunicorn worker held {LOPSIDED_SHARE:.0%} or more of the connections: "
              + ", ".join(f"{LABELS[key]} {count}" for key, count in lopsided.items())
              + " (whichever worker was running took them: see bench/README.md)")
        for key, v in summary.items():
            if v.get("ratio_balanced_rounds_median") is not None:
                print(f"  ratio {LABELS[key]} / bare over the rounds where neither was lopsided: "
                      f"{v['ratio_balanced_rounds_median']:.2f} ({len(v['ratio_balanced_rounds'])} rounds)")
    ceiling = generator_ceiling(measurements)
    if ceiling is not None:
        print(f"generator ceiling: ~{ceiling:.0f} req/s per CPU-second it gets (requests / its own CPU time against "
              f"the bare app, which it drove at {summary['bare']['rps_median']:.0f} req/s)")
    for key, check in checks.items():
        harness.print_store_check(LABELS[key], check)


def print_environments(results: dict[str, Any]) -> None:
    """One line per environment and target: lopsided rounds, req/s then and otherwise, the ratio to bare."""
    print(f"\n{'environment':<12}{'target':<21}{'lopsided':>9}{'req/s then':>12}{'otherwise':>11}{'bare':>8}"
          f"{'ratio':>7}{'worst round':>13}{'to stored':>10}  splits")
    for environment, result in results.items():
        for key, v in result["summary"].items():
            rows = [m for m in result["measurements"] if m.target == key]
            spans = [[m.rps for m in rows if m.lopsided == lopsided] for lopsided in (True, False)]
            worst = min(v.get("ratio_rounds") or [0.0]) if key != "bare" else None
            print(f"{environment:<12}{LABELS[key]:<21}{f'{sum(m.lopsided for m in rows)} of {len(rows)}':>9}"
                  + "".join(f"{_span(span):>{width}}" for span, width in zip(spans, (12, 11), strict=True))
                  + f"{result['summary'].get('bare', {}).get('rps_median') or 0:>8.0f}"
                  f"{show(v.get('ratio_to_bare'), '.2f'):>7}{show(worst, '.2f'):>13}"
                  f"{show(v.get('ratio_to_stored'), '.2f'):>10}  "
                  + " ".join(harness.joined(m.connections_per_worker, "d") or "-" for m in rows))
    print(f"ratio: of the req/s medians, as above; target: caselink / bare >= {TARGET_RATIO} in every environment, "
          f"no round below {TARGET_ROUND_RATIO}; to stored: caselink / {LABELS['stored']}; lopsided: one worker held "
          f"{LOPSIDED_SHARE:.0%} or more of the connections")


def _span(values: list[float]) -> str:
    return "-" if not values else f"{min(values):.0f}" + ("" if min(values) == max(values) else f"-{max(values):.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_load_options(parser, duration=8.0, warmup=2.0, rounds=5)
    harness.add_run_options(parser)
    parser.add_argument("--new-connections", action="store_true", help="every request on a new connection "
                        "(Connection: close), as a sender without keep-alive does; uses the python generator")
    parser.add_argument("--environments", default="deployed,plain", help="comma-separated, run in this order: "
                        "deployed (PYTHONUNBUFFERED=1, output through a pipe), plain (neither)")
    parser.add_argument("--targets", default="bare,stored,dry-run,live", help="comma-separated, from: bare, stored "
                        "(the bare app committing each body to SQLite before its 202), dry-run, live, gthread "
                        "(dry-run under gunicorn's own gthread worker; not run unless named)")
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))  # what WEB_CONCURRENCY, GUNICORN_THREADS resolve to
    parser.add_argument("--workers", type=int, default=conf["workers"])
    parser.add_argument("--threads", type=int, default=conf["threads"])
    parser.add_argument("--gunicorn-args", default="", help="more gunicorn settings for every target alike, as on "
                        "its command line (e.g. --keep-alive 2)")
    parser.add_argument("--baseline", help="a revision (or source folder): its caselink live runs as one more "
                        "target, 'caselink live then', under its own gunicorn.conf.py (e.g. 7197a0d, issue 17's)")
    parser.add_argument("--same-servers", action="store_true",
                        help="keep each target's server for every round (default: start every server afresh)")
    args = parser.parse_args(argv)
    if not args.fixture.is_file():
        parser.error(f"no fixture at {args.fixture}; pass --fixture PATH (a Datadog incident webhook body)")
    args.environments = harness.listed(parser, "--environments", args.environments, tuple(ENVIRONMENTS))
    args.targets = harness.listed(parser, "--targets", args.targets, TARGETS)
    # The python generator opens a new connection whenever an answer says Connection: close.
    args.generator_used = "python" if args.new_connections else harness.generator_used(parser, args.generator)
    if args.baseline and "baseline" not in args.targets:
        args.targets.append("baseline")
    elif "baseline" in args.targets and not args.baseline:
        parser.error("the baseline target needs --baseline REVISION")
    results: dict[str, Any] = {}
    with harness.Run("ack", args, argv) as run:
        if args.baseline:
            args.baseline_tree = harness.source_tree(args.baseline, run.workdir)
            LABELS["baseline"] = f"live at {args.baseline}"[:21]
        machine = run.document["machine"]
        print(f"machine: {machine['cpus']} CPUs, {machine['platform']}, Python {machine['python']}")
        for environment in args.environments:
            results[environment] = run_environment(args, run, environment)
    for environment, result in results.items():
        result["summary"] = summarise(result["measurements"], args.targets)
        result["generator_ceiling_rps_per_cpu_second"] = generator_ceiling(result["measurements"])
        print(f"\n== {environment}: {ENVIRONMENTS[environment]}")
        print_report(result["summary"], result["measurements"], result["store_checks"])
    print_environments(results)
    run.write("ack", f"-{args.generator_used}", generator=args.generator_used,
              target_ratio=TARGET_RATIO, target_round_ratio=TARGET_ROUND_RATIO, environments=results)
    return 1 if any(not c["ok"] for r in results.values() for c in r["store_checks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
