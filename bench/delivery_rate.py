"""Links delivered per second by one delivery worker, against the fake Datadog, with and without a rate limit.

For each run: a fresh database (SQLite, or PostgreSQL with --stores), `flask db upgrade`,
then many distinct links planned straight into the store through caselink.store.Store.record
(the Datadog incident webhook path minus HTTP: the datadog handler normalises each body
and the repo's rules.yaml plans one link, "INCIDENT:<new uuid> CAUSES CASE:<key>", the
keys spread over --cases cases the fake knows). Only then does `flask --app app worker`
start, so the queue is full from its first claim and nothing but delivery is measured:
from the first link creation the fake recorded to the last (the fake's own timestamps).

Scenarios: `unlimited` (the fake answers as fast as it can), `limited` (the fake
rate-limits link creation to --limit per --period seconds, calendar aligned, with
X-RateLimit-* headers and 429s, as Datadog does) and `storm` (--storm-links links,
100 by default, each caused by its own incident and pointing at one of --storm-cases
cases, 10 by default: the burst of one outage). Every run reports the calls the fake
received per link created (target for the storm: <= 1.2). For `limited` it reports the achieved
fraction of the limit (links created per period / limit, over the whole periods after
the first; target >= 0.95) and the 429s the fake answered, in total and after the first
period (target: none). Every run checks that every planned link reached the fake exactly
once and that the store holds them all as delivered.

    python bench/delivery_rate.py [--rounds 3] [--stores sqlite,postgresql] [--limit 50 --period 1 --periods 20]
    python bench/delivery_rate.py --scenarios storm --baseline 7197a0d   # calls per link, then and now

`--baseline REV` (a commit, or a folder holding a source tree) runs every scenario a second
time with the worker of that code, in the same rounds, on the same fake.

See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import harness
from harness import ROOT
from harness import Databases
from harness import Fake
from harness import median

ALL_STORES = ("sqlite", "postgresql")
ALL_SCENARIOS = ("unlimited", "limited", "storm")
STORM_TARGET = 1.2
CREATE_PATH = "/api/v2/cases/link"
TARGET_FRACTION = 0.95
PLAN_BATCH = 250


# -- planning -------------------------------------------------------------------------


def plan_links(database_url: str, count: int, cases: list[str], tag: str) -> tuple[list[tuple[str, str]], float]:
    """Plan `count` distinct pending links through the store, as webhooks would; returns (incident, case) pairs."""
    from caselink.events import Headers
    from caselink.events import WebhookRequest
    from caselink.rules import load_rules
    from caselink.store import Store
    from handlers import REGISTRY

    handler = REGISTRY["datadog"]
    ruleset = load_rules(ROOT / "rules.yaml", sources=tuple(REGISTRY))
    store = Store(harness.sqlalchemy_url(database_url))
    planned: list[tuple[str, str]] = []
    started = time.perf_counter()
    try:
        for start in range(0, count, PLAN_BATCH):
            items = []
            for index in range(start, min(start + PLAN_BATCH, count)):
                incident, case = str(uuid.uuid4()), cases[index % len(cases)]
                body = json.dumps(
                    {
                        "event": "incident.created",
                        "id": f"{tag}-{index}",
                        "incident": {
                            "id": incident,
                            "title": f"Bench incident {index}, see {case}",
                            "severity": "SEV-2",
                        },
                    }
                ).encode()
                request = WebhookRequest(
                    "datadog", body, Headers({"Content-Type": "application/json"}), received_at=time.time()
                )
                for event in handler.normalise(handler.parse(request), request):
                    evaluation = ruleset.evaluate(event)
                    if len(evaluation.planned) != 1:
                        raise RuntimeError(f"rules.yaml planned {len(evaluation.planned)} links for {body!r}, not 1")
                    items.append((event, evaluation))
                planned.append((incident, case))
            store.record(items, ruleset=ruleset.digest, dry_run=False)
        seconds = time.perf_counter() - started
        counts = store.count_links()
    finally:
        store.dispose()
    if counts.get("pending") != count:
        raise RuntimeError(f"planned {count} links but the store holds {counts}")
    return planned, seconds


def plan_links_with(
    root: Path, database_url: str, count: int, cases: list[str], tag: str
) -> tuple[list[tuple[str, str]], float]:
    """plan_links as the source tree at `root` does it (its store writes its own schema)."""
    import subprocess

    script = (
        "import json, sys; sys.path[:0] = ['bench']; import delivery_rate; "
        "planned, seconds = delivery_rate.plan_links(*json.loads(sys.argv[1])); "
        "print(json.dumps([planned, seconds]))"
    )
    arguments = json.dumps([database_url, count, cases, tag])
    result = subprocess.run(
        [sys.executable, "-c", script, arguments], cwd=root, capture_output=True, text=True, timeout=300, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"planning with {root} failed:\n{result.stderr[-3000:]}")
    planned, seconds = json.loads(result.stdout.strip().splitlines()[-1])
    return [tuple(pair) for pair in planned], seconds


def count_links(database_url: str) -> dict[str, int]:
    from caselink.store import Store

    store = Store(harness.sqlalchemy_url(database_url))
    try:
        return {state: n for state, n in store.count_links().items() if n}
    finally:
        store.dispose()


# -- one run --------------------------------------------------------------------------


def run_once(
    args: argparse.Namespace,
    fake: Fake,
    databases: Databases,
    workdir: Path,
    store: str,
    scenario: str,
    round_number: int,
    code: str = "this",
    root: Path = ROOT,
) -> dict[str, Any]:
    links = {"unlimited": args.links, "limited": args.limited_links, "storm": args.storm_links}[scenario]
    cases = args.case_keys[: args.storm_cases] if scenario == "storm" else args.case_keys
    label = f"{store}-{scenario}-{code}-r{round_number}"
    database_url = databases.new(store, label)
    env = harness.caselink_env(
        database_url,
        fake.url,
        **({"WORKER_CONCURRENCY": args.concurrency} if args.concurrency else {}),
    )
    harness.migrate(env, root)
    if root == ROOT:
        planned, plan_seconds = plan_links(database_url, links, cases, label)
    else:
        planned, plan_seconds = plan_links_with(root, database_url, links, cases, label)
    fake.reset()
    if scenario == "limited":
        fake.configure(
            limits={"create": {"limit": args.limit, "period": args.period, "name": "cases_link_create"}},
        )
    fake_cpu_start = fake.process.cpu_seconds()
    workers = [harness.worker(f"worker-{label}-{n}", env, workdir, root) for n in range(args.workers)]

    def workers_cpu() -> float | None:
        seconds = [worker.cpu_seconds() for worker in workers]
        return None if None in seconds else sum(seconds)

    started = time.monotonic()
    timeout = args.timeout or (120 + (links / args.limit * args.period * 3 if scenario == "limited" else links / 10))
    worker_cpu_first = None
    try:
        seen, progress_at = -1, time.monotonic()
        while True:
            summary = fake.summary()
            if worker_cpu_first is None and summary["requests"]:
                # The worker's start-up (imports, app, schema check) is not delivery: count from its first call.
                worker_cpu_first = workers_cpu()
            if summary["links"] >= links:
                break
            for worker in workers:
                if not worker.running:
                    raise RuntimeError(f"a worker exited:\n{worker.logs()}")
            if summary["links"] != seen:
                seen, progress_at = summary["links"], time.monotonic()
            if time.monotonic() - started > timeout or time.monotonic() - progress_at > 60:
                break
            time.sleep(0.25)
        # The fake has every link; the worker writes `delivered` right after each answer.
        deadline = time.monotonic() + 15
        states = count_links(database_url)
        while set(states) - {"delivered"} and time.monotonic() < deadline:
            time.sleep(0.2)
            states = count_links(database_url)
        worker_cpu_end = workers_cpu()
    finally:
        for worker in workers:
            worker.stop()
    fake_cpu_end = fake.process.cpu_seconds()
    rows = fake.requests()
    state = fake.state()
    result = analyse(rows, state, planned, args, scenario)
    result.update(
        code=code,
        store=store,
        scenario=scenario,
        round=round_number,
        planned=links,
        plan_seconds=round(plan_seconds, 3),
        store_states=states,
        worker_cpu_seconds=None
        if worker_cpu_first is None or worker_cpu_end is None
        else round(worker_cpu_end - worker_cpu_first, 3),
        fake_cpu_seconds=None
        if fake_cpu_start is None or fake_cpu_end is None
        else round(fake_cpu_end - fake_cpu_start, 3),
    )
    result["ok"] = result["exactly_once"]["ok"] and result["created"] == links and states == {"delivered": links}
    return result


def analyse(
    rows: list[dict[str, Any]],
    state: dict[str, Any],
    planned: list[tuple[str, str]],
    args: argparse.Namespace,
    scenario: str,
) -> dict[str, Any]:
    creates = [r for r in rows if r["method"] == "POST" and r["path"] == CREATE_PATH]
    made = sorted(r["at"] for r in creates if r["status"] == 201)
    result: dict[str, Any] = {
        "created": len(made),
        "calls": len(rows),
        "calls_per_link": round(len(rows) / len(made), 3) if made else None,
        "requests": Counter(f"{r['method']} {_endpoint(r['path'])}" for r in rows),
        "statuses": Counter(str(r["status"]) for r in rows),
    }
    if len(made) >= 2:
        result["seconds"] = round(made[-1] - made[0], 3)
        result["links_per_second"] = round((len(made) - 1) / (made[-1] - made[0]), 1)
    else:
        result["seconds"] = result["links_per_second"] = None
    too_many = [r for r in rows if r["status"] == 429]
    result["too_many_total"] = len(too_many)
    result["too_many_fake_counter"] = state.get("too_many")
    if scenario == "limited" and creates:
        period, limit = args.period, args.limit
        first = math.floor(min(r["at"] for r in creates) / period)
        last = math.floor(made[-1] / period) if made else first
        per_window = Counter(math.floor(at / period) for at in made)
        whole = [per_window.get(window, 0) for window in range(first + 1, last)]
        result["first_period_created"] = per_window.get(first, 0)
        result["whole_periods"] = len(whole)
        result["created_per_whole_period"] = whole
        result["fraction_of_limit"] = round(sum(whole) / (len(whole) * limit), 4) if whole else None
        result["fraction_of_limit_min_period"] = round(min(whole) / limit, 4) if whole else None
        result["too_many_after_first_period"] = sum(1 for r in too_many if math.floor(r["at"] / period) > first)
        late = Counter(math.floor(r["at"] / period) - first for r in too_many if math.floor(r["at"] / period) > first)
        result["too_many_by_period_after_first"] = dict(sorted(late.items()))
    result["exactly_once"] = exactly_once(state, planned)
    return result


def exactly_once(state: dict[str, Any], planned: list[tuple[str, str]]) -> dict[str, Any]:
    """Every planned link among the fake's links exactly once, and nothing else."""
    counts = Counter(
        (
            a["parent_entity_type"],
            a["parent_entity_id"],
            a["relationship"],
            a["child_entity_type"],
            a["child_entity_id"],
        )
        for a in (link["attributes"] for link in state["links"])
    )
    uuids = {case: harness.case_uuid(case) for case in {case for _, case in planned}}
    expected = {("INCIDENT", incident, "CAUSES", "CASE", uuids[case]) for incident, case in planned}
    duplicated = sum(1 for key, n in counts.items() if n > 1)
    missing = len(expected - set(counts))
    unexpected = len(set(counts) - expected)
    return {
        "planned": len(expected),
        "links_at_fake": sum(counts.values()),
        "distinct_at_fake": len(counts),
        "duplicated": duplicated,
        "missing": missing,
        "unexpected": unexpected,
        "ok": duplicated == 0 and missing == 0 and unexpected == 0 and len(expected) == len(planned),
    }


def _endpoint(path: str) -> str:
    if path == CREATE_PATH:
        return path
    if path.startswith("/api/v2/cases/"):
        return "/api/v2/cases/{key}"
    return path


# -- reporting ------------------------------------------------------------------------


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for result in results:
        key = f"{result['store']}/{result['scenario']}" + ("" if result["code"] == "this" else f"@{result['code']}")
        summary.setdefault(key, []).append(result)
    out: dict[str, Any] = {}
    for key, rows in summary.items():
        values: dict[str, Any] = {
            "rounds": len(rows),
            "links_per_second_median": median([r["links_per_second"] for r in rows]),
            "links_per_second_rounds": [r["links_per_second"] for r in rows],
            "calls_per_link_median": median([r["calls_per_link"] for r in rows]),
            "calls_per_link_rounds": [r["calls_per_link"] for r in rows],
            "too_many_total_rounds": [r["too_many_total"] for r in rows],
            "worker_cpu_ms_per_link_median": median(
                [
                    r["worker_cpu_seconds"] * 1000 / r["created"] if r["worker_cpu_seconds"] and r["created"] else None
                    for r in rows
                ]
            ),
            "worker_cpu_share_median": median(
                [
                    r["worker_cpu_seconds"] / r["seconds"] if r["worker_cpu_seconds"] and r["seconds"] else None
                    for r in rows
                ]
            ),
            "fake_cpu_share_median": median(
                [r["fake_cpu_seconds"] / r["seconds"] if r["fake_cpu_seconds"] and r["seconds"] else None for r in rows]
            ),
            "exactly_once_all_rounds": all(r["exactly_once"]["ok"] for r in rows),
            "store_delivered_all_rounds": all(r["ok"] for r in rows),
        }
        if rows[0]["scenario"] == "limited":
            values["fraction_of_limit_median"] = median([r.get("fraction_of_limit") for r in rows])
            values["fraction_of_limit_rounds"] = [r.get("fraction_of_limit") for r in rows]
            values["fraction_of_limit_min_period_rounds"] = [r.get("fraction_of_limit_min_period") for r in rows]
            values["too_many_after_first_period_rounds"] = [r.get("too_many_after_first_period") for r in rows]
            values["whole_periods_rounds"] = [r.get("whole_periods") for r in rows]
        out[key] = values
    return out


def print_report(summary: dict[str, Any], args: argparse.Namespace) -> None:
    print()
    print(
        f"{'store/scenario':<24}{'links/s':>9}  {'rounds':<18}{'of limit':>9}  {'rounds':<20}"
        f"{'429s total':>12}{'after 1st':>11}{'exactly once':>14}{'worker CPU':>12}{'share':>7}{'fake':>6}"
        f"{'calls/link':>12}"
    )
    print(f"{'':<24}{'(median)':>9}  {'':<18}{'(median)':>9}  {'':<20}{'':>12}{'':>11}{'':>14}{'ms/link':>12}")
    for key, v in summary.items():
        rounds = "/".join(f"{x:.0f}" if x is not None else "-" for x in v["links_per_second_rounds"])
        fraction = v.get("fraction_of_limit_median")
        fraction_rounds = "/".join(f"{x:.3f}" if x is not None else "-" for x in v.get("fraction_of_limit_rounds", []))
        total = "/".join(str(x) for x in v["too_many_total_rounds"])
        after = "/".join(str(x) for x in v.get("too_many_after_first_period_rounds", [])) or "-"
        print(
            f"{key:<24}{_show(v['links_per_second_median'], '.1f'):>9}  {rounds:<18}"
            f"{_show(fraction, '.3f'):>9}  {fraction_rounds or '-':<20}{total:>12}{after:>11}"
            f"{'yes' if v['exactly_once_all_rounds'] and v['store_delivered_all_rounds'] else 'NO':>14}"
            f"{_show(v['worker_cpu_ms_per_link_median'], '.2f'):>12}{_show(v['worker_cpu_share_median'], '.0%'):>7}"
            f"{_show(v['fake_cpu_share_median'], '.0%'):>6}{_show(v['calls_per_link_median'], '.3f'):>12}"
        )
    print()
    for key, v in summary.items():
        if "fraction_of_limit_median" not in v:
            continue
        fraction = v["fraction_of_limit_median"]
        verdict = "meets" if fraction is not None and fraction >= TARGET_FRACTION else "BELOW"
        after = v["too_many_after_first_period_rounds"]
        late = "none" if all(x == 0 for x in after) else f"{sum(x or 0 for x in after)} over all rounds"
        print(
            f"{key}: achieved {_show(fraction, '.3f')} of {args.limit} per {args.period:g} s "
            f"({verdict} the target of {TARGET_FRACTION}; worst whole period per round: "
            + "/".join(_show(x, ".2f") for x in v["fraction_of_limit_min_period_rounds"])
            + f"); 429s after the first period: {late} (target: none)"
        )
    for key, v in summary.items():
        if "/storm" in key:
            per_link = v["calls_per_link_median"]
            verdict = "meets" if per_link is not None and per_link <= STORM_TARGET else "ABOVE"
            print(
                f"{key}: {_show(per_link, '.3f')} Datadog calls per link (rounds "
                + "/".join(_show(x, ".3f") for x in v["calls_per_link_rounds"])
                + f"; {verdict} the target of {STORM_TARGET} or fewer)"
            )
    limited = {k.split("/")[0]: v for k, v in summary.items() if k.endswith("/limited")}
    for key, v in summary.items():
        if key.endswith("/unlimited") and key.split("/")[0] in limited:
            other = limited[key.split("/")[0]]
            if v["links_per_second_median"] and other["links_per_second_median"]:
                headroom = v["links_per_second_median"] / (args.limit / args.period)
                print(f"{key}: {headroom:.1f}x the limit of the limited scenario (unlimited links/s / limit)")


def _show(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# -- main -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the runs take turns in each")
    parser.add_argument("--stores", default="sqlite", help="comma-separated, from: sqlite, postgresql")
    parser.add_argument("--scenarios", default=",".join(ALL_SCENARIOS), help="comma-separated: unlimited, limited")
    parser.add_argument("--links", type=int, default=2000, help="links planned for the unlimited scenario")
    parser.add_argument("--limit", type=int, default=50, help="link creations the fake allows per period")
    parser.add_argument("--period", type=float, default=1.0, help="seconds per rate-limit period")
    parser.add_argument(
        "--periods", type=int, default=20, help="limited scenario: plan limit x periods links (about this many periods)"
    )
    parser.add_argument("--cases", type=int, default=20, help="distinct cases the links point at (the fake knows them)")
    parser.add_argument("--storm-links", type=int, default=100, help="storm scenario: links planned at once")
    parser.add_argument("--storm-cases", type=int, default=10, help="storm scenario: distinct cases they point at")
    parser.add_argument("--baseline", help="a commit (or source folder) whose worker runs every scenario too")
    parser.add_argument("--concurrency", type=int, help="WORKER_CONCURRENCY of the worker (default: caselink's)")
    parser.add_argument(
        "--workers", type=int, default=1, help="delivery worker processes sharing the queue and the rate limit"
    )
    parser.add_argument("--postgres-url", default=harness.DEFAULT_POSTGRES, help="server to create databases on")
    parser.add_argument("--timeout", type=float, help="seconds a run may take (default: from its size)")
    parser.add_argument("--output", type=Path, help="JSON results file (default: bench/results/delivery-<time>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (SQLite files, logs)")
    args = parser.parse_args(argv)
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not set(args.stores) <= set(ALL_STORES) or not args.stores:
        parser.error(f"--stores: choose from {', '.join(ALL_STORES)}")
    if not set(args.scenarios) <= set(ALL_SCENARIOS) or not args.scenarios:
        parser.error(f"--scenarios: choose from {', '.join(ALL_SCENARIOS)}")
    if args.limit < 1 or args.period <= 0 or args.periods < 3 or args.cases < 1 or args.links < 2:
        parser.error("--limit >= 1, --period > 0, --periods >= 3, --cases >= 1, --links >= 2")
    if args.storm_links < 2 or args.storm_cases < 1:
        parser.error("--storm-links >= 2, --storm-cases >= 1")
    args.limited_links = args.limit * args.periods
    args.case_keys = [f"BENCH-{n}" for n in range(1, max(args.cases, args.storm_cases) + 1)]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="caselink-bench-delivery-"))
    databases = Databases(workdir, args.postgres_url)
    if "postgresql" in args.stores:
        databases.check_postgres()
    fake = Fake(workdir, args.case_keys)
    processes = [fake.process]
    results: list[dict[str, Any]] = []
    codes = [("this", ROOT)]
    if args.baseline:
        codes.append((args.baseline, harness.source_tree(args.baseline, workdir)))
    runs = [(code, store, scenario) for code in codes for store in args.stores for scenario in args.scenarios]
    with harness.terminate_on_sigterm():
        with harness.in_workdir(workdir, keep=args.keep):
            with harness.cleanup(processes, databases):
                fake.start()
                print(f"machine: {harness.machine()}")
                print(
                    f"fake Datadog on {fake.url}; "
                    f"{args.cases} cases; "
                    f"unlimited: {args.links} links; limited: "
                    f"{args.limited_links} links at {args.limit} per {args.period:g} s; "
                    f"{args.workers} worker process(es), "
                    f"concurrency {args.concurrency or 'default (WORKER_CONCURRENCY unset)'}",
                    flush=True,
                )
                for round_number in range(1, args.rounds + 1):
                    shift = (round_number - 1) % len(runs)
                    for (code, root), store, scenario in runs[shift:] + runs[:shift]:
                        r = run_once(args, fake, databases, workdir, store, scenario, round_number, code, root)
                        results.append(r)
                        line = (
                            f"round {round_number} {code} {store:<10} {scenario:<9} planned {r['planned']} "
                            f"(in {r['plan_seconds']:.1f} s), created {r['created']} in {r['seconds']} s: "
                            f"{r['links_per_second']} links/s (worker CPU {r['worker_cpu_seconds']} s); "
                            f"429s {r['too_many_total']}"
                        )
                        if scenario == "limited":
                            line += (
                                f" ({r.get('too_many_after_first_period')} after the first period); "
                                f"of limit {r.get('fraction_of_limit')} over {r.get('whole_periods')} whole periods "
                                f"{r.get('created_per_whole_period')}"
                            )
                        once = r["exactly_once"]
                        line += (
                            f"; exactly once: {'ok' if r['ok'] else 'FAILED'} ({once['distinct_at_fake']} distinct of "
                            f"{once['planned']}, {once['duplicated']} duplicated, {once['missing']} missing, "
                            f"{once['unexpected']} unexpected; store {r['store_states']})"
                            f"; requests {dict(r['requests'])} ({r['calls_per_link']} per link)"
                        )
                        print(line, flush=True)

    summary = summarise(results)
    print_report(summary, args)
    document = {
        "benchmark": "links delivered per second by one delivery worker against the fake Datadog",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": harness.machine(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "output"},
        "target_fraction": TARGET_FRACTION,
        "summary": summary,
        "runs": results,
    }
    path = harness.write_results("delivery", document, args.output)
    print(f"results: {harness.shown(path)}")
    failed = [r for r in results if not r["ok"]]
    if failed:
        print(f"{len(failed)} run(s) did not deliver every planned link exactly once", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
