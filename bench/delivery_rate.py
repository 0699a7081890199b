"""Links delivered per second by the delivery worker, against the fake Datadog, with and without a rate limit.

Links are planned straight into a fresh database (the webhook path minus HTTP), then `flask --app app
worker` starts with the queue full. Scenarios `unlimited`, `limited` (429s beyond --limit per --period)
and `storm` (one outage's burst): links/s, share of the limit, 429s, calls per link, exactly-once check.
Scenario `trickle` plans the storm's links one by one while the worker runs (--trickle-rate a second),
as webhooks spread over time arrive: each link then comes after the last listing of its case.

    python bench/delivery_rate.py [--rounds 3] [--stores sqlite,postgresql] [--limit 50 --period 1 --periods 20]
    python bench/delivery_rate.py --scenarios storm --baseline 7197a0d   # calls per link, then and now
    python bench/delivery_rate.py --scenarios storm,trickle               # a burst, and the same links spread out

See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import harness
from harness import ROOT
from harness import median
from harness import show

STORM_TARGET, TARGET_FRACTION = 1.2, 0.95
CREATE_PATH = "/api/v2/cases/link"


def plan_links(
    database_url: str, count: int, cases: list[str], tag: str, *, check: bool = True
) -> tuple[list[tuple[str, str]], float]:
    """Plan `count` distinct pending links through the store, as webhooks would; (incident, case) pairs.
    `check`: the store must then hold exactly `count` pending links (no worker runs)."""
    from caselink.events import Headers
    from caselink.events import WebhookRequest
    from caselink.rules import load_rules
    from caselink.store import Store
    from handlers import REGISTRY

    handler, ruleset = REGISTRY["datadog"], load_rules(ROOT / "rules.yaml", sources=tuple(REGISTRY))
    store = Store(harness.sqlalchemy_url(database_url))
    planned: list[tuple[str, str]] = []
    started = time.perf_counter()
    try:
        for start in range(0, count, 250):  # 250 to a transaction, as group commit makes them
            items = []
            for index in range(start, min(start + 250, count)):
                incident, case = str(uuid.uuid4()), cases[index % len(cases)]
                body = json.dumps({"event": "incident.created", "id": f"{tag}-{index}", "incident": {
                    "id": incident, "title": f"Bench incident {index}, see {case}", "severity": "SEV-2"}}).encode()
                request = WebhookRequest("datadog", body, Headers({"Content-Type": "application/json"}),
                                         received_at=time.time())
                for event in handler.normalise(handler.parse(request), request):
                    evaluation = ruleset.evaluate(event)
                    if len(evaluation.planned) != 1:
                        raise RuntimeError(f"rules.yaml planned {len(evaluation.planned)} links for {body!r}, not 1")
                    items.append((event, evaluation))
                planned.append((incident, case))
            store.record(items, ruleset=ruleset.digest, dry_run=False)
        seconds, counts = time.perf_counter() - started, store.count_links()
    finally:
        store.dispose()
    if check and counts.get("pending") != count:
        raise RuntimeError(f"planned {count} links but the store holds {counts}")
    return planned, seconds


def plan_links_with(root: Path, *arguments: Any) -> tuple[list[tuple[str, str]], float]:
    """plan_links as the source tree at `root` does it (its store writes its own schema)."""
    script = ("import json, sys; sys.path[:0] = ['bench']; import delivery_rate; "
              "print(json.dumps(delivery_rate.plan_links(*json.loads(sys.argv[1]))))")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(arguments)], cwd=root,
                          capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"planning with {root} failed:\n{done.stderr[-3000:]}")
    planned, seconds = json.loads(done.stdout.strip().splitlines()[-1])
    return [tuple(pair) for pair in planned], seconds


def count_links(database_url: str) -> dict[str, int]:
    from caselink.store import Store

    store = Store(harness.sqlalchemy_url(database_url))
    try:
        return {state: n for state, n in store.count_links().items() if n}
    finally:
        store.dispose()


def run_once(args: argparse.Namespace, run: harness.Run, fake: harness.Fake, store: str, scenario: str,
             round_number: int, code: str, root: Path) -> dict[str, Any]:
    links = {"unlimited": args.links, "limited": args.limit * args.periods, "storm": args.storm_links,
             "trickle": args.storm_links}[scenario]
    cases = args.case_keys[: args.storm_cases] if scenario in ("storm", "trickle") else args.case_keys
    label = f"{store}-{scenario}-{code}-r{round_number}"
    database_url = run.databases.new(store, label)
    env = harness.caselink_env(database_url, fake.url, WORKER_CONCURRENCY=args.concurrency)
    harness.migrate(env, root)
    plan = plan_links if root == ROOT else lambda *a: plan_links_with(root, *a)
    planned: list[tuple[str, str]]
    if scenario == "trickle":
        planned, plan_seconds = [], 0.0  # planned below, while the worker runs
    else:
        planned, plan_seconds = plan(database_url, links, cases, label)
    fake.post("/_fake/reset", {})
    if scenario == "limited":
        fake.post("/_fake/configure", {"limits": {"create": {"limit": args.limit, "period": args.period,
                                                             "name": "cases_link_create"}}})
    fake_cpu = [fake.process.cpu_seconds()]
    workers = [harness.worker(f"worker-{label}-{n}", env, run.workdir, root) for n in range(args.workers)]

    def workers_cpu() -> float | None:
        seconds = [w.cpu_seconds() for w in workers]
        return None if None in seconds else sum(seconds)  # type: ignore[arg-type]

    worker_cpu: list[float | None] = []
    if scenario == "trickle":
        worker_cpu.append(workers_cpu())  # delivery starts with the first link planned
        began = time.monotonic()
        for index in range(links):
            planned += plan_links(database_url, 1, [cases[index % len(cases)]], f"{label}-{index}", check=False)[0]
            time.sleep(max(0.0, began + (index + 1) / args.trickle_rate - time.monotonic()))
        plan_seconds = time.monotonic() - began
    started = progress_at = time.monotonic()
    timeout = args.timeout or 120 + (links / args.limit * args.period * 3 if scenario == "limited" else links / 10)
    try:
        seen = -1
        while True:
            summary = fake.get("/_fake/summary")
            if not worker_cpu and summary["requests"]:
                worker_cpu.append(workers_cpu())  # the worker's start-up is not delivery: count from its first call
            if summary["links"] >= links:
                break
            for w in workers:
                if not w.running:
                    raise RuntimeError(f"a worker exited:\n{w.logs()}")
            if summary["links"] != seen:
                seen, progress_at = summary["links"], time.monotonic()
            if time.monotonic() - started > timeout or time.monotonic() - progress_at > 60:
                break
            time.sleep(0.25)
        deadline, states = time.monotonic() + 15, count_links(database_url)
        while set(states) - {"delivered"} and time.monotonic() < deadline:  # `delivered` follows each answer
            time.sleep(0.2)
            states = count_links(database_url)
        worker_cpu.append(workers_cpu())
    finally:
        run.stop(*workers)
    fake_cpu.append(fake.process.cpu_seconds())
    result = analyse(fake.requests(), fake.get("/_fake/state"), planned, args, scenario)
    result.update(code=code, store=store, scenario=scenario, round=round_number, planned=links,
                  plan_seconds=round(plan_seconds, 3), store_states=states,
                  worker_cpu_seconds=_spent(worker_cpu), fake_cpu_seconds=_spent(fake_cpu))
    result["ok"] = result["exactly_once"]["ok"] and result["created"] == links and states == {"delivered": links}
    return result


def _spent(readings: list[float | None]) -> float | None:
    return None if len(readings) < 2 or None in readings else round(readings[-1] - readings[0], 3)  # type: ignore[operator]


def analyse(rows: list[dict[str, Any]], state: dict[str, Any], planned: list[tuple[str, str]],
            args: argparse.Namespace, scenario: str) -> dict[str, Any]:
    creates = [r for r in rows if r["method"] == "POST" and r["path"] == CREATE_PATH]
    made = sorted(r["at"] for r in creates if r["status"] == 201)
    too_many = [r for r in rows if r["status"] == 429]
    result: dict[str, Any] = {
        "created": len(made), "calls": len(rows), "calls_per_link": round(len(rows) / len(made), 3) if made else None,
        "requests": Counter(f"{r['method']} {_endpoint(r['path'])}" for r in rows),
        "statuses": Counter(str(r["status"]) for r in rows),
        "seconds": round(made[-1] - made[0], 3) if len(made) >= 2 else None,
        "links_per_second": round((len(made) - 1) / (made[-1] - made[0]), 1) if len(made) >= 2 else None,
        "too_many_total": len(too_many), "too_many_fake_counter": state.get("too_many")}
    if scenario == "limited" and creates:
        # Whole periods only: the first (the worker learns the limit) and the last (the queue runs dry) are partial.
        first = math.floor(min(r["at"] for r in creates) / args.period)
        last = math.floor(made[-1] / args.period) if made else first
        per_window = Counter(math.floor(at / args.period) for at in made)
        whole = [per_window.get(window, 0) for window in range(first + 1, last)]
        late = Counter(math.floor(r["at"] / args.period) - first for r in too_many
                       if math.floor(r["at"] / args.period) > first)
        result.update(first_period_created=per_window.get(first, 0), whole_periods=len(whole),
                      created_per_whole_period=whole,
                      fraction_of_limit=round(sum(whole) / (len(whole) * args.limit), 4) if whole else None,
                      fraction_of_limit_min_period=round(min(whole) / args.limit, 4) if whole else None,
                      too_many_after_first_period=sum(late.values()),
                      too_many_by_period_after_first=dict(sorted(late.items())))
    result["exactly_once"] = exactly_once(state, planned)
    return result


def _endpoint(path: str) -> str:
    return "/api/v2/cases/{key}" if path.startswith("/api/v2/cases/") and path != CREATE_PATH else path


def exactly_once(state: dict[str, Any], planned: list[tuple[str, str]]) -> dict[str, Any]:
    """Every planned link among the fake's links exactly once, and nothing else."""
    from tests.fake_datadog import case_uuid

    counts = Counter(tuple(a[k] for k in ("parent_entity_type", "parent_entity_id", "relationship",
                                         "child_entity_type", "child_entity_id"))
                     for a in (link["attributes"] for link in state["links"]))
    expected = {("INCIDENT", incident, "CAUSES", "CASE", case_uuid(case)) for incident, case in planned}
    duplicated = sum(1 for n in counts.values() if n > 1)
    missing, unexpected = len(expected - set(counts)), len(set(counts) - expected)
    return {"planned": len(expected), "links_at_fake": sum(counts.values()), "distinct_at_fake": len(counts),
            "duplicated": duplicated, "missing": missing, "unexpected": unexpected,
            "ok": duplicated == missing == unexpected == 0 and len(expected) == len(planned)}


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        code = "" if r["code"] == "this" else f"@{r['code']}"
        groups.setdefault(f"{r['store']}/{r['scenario']}{code}", []).append(r)
    out: dict[str, Any] = {}
    for key, rows in groups.items():
        v = out[key] = {
            "rounds": len(rows), "links_per_second_median": median(r["links_per_second"] for r in rows),
            "links_per_second_rounds": [r["links_per_second"] for r in rows],
            "calls_per_link_median": median(r["calls_per_link"] for r in rows),
            "calls_per_link_rounds": [r["calls_per_link"] for r in rows],
            "too_many_total_rounds": [r["too_many_total"] for r in rows],
            "worker_cpu_ms_per_link_median": median(r["worker_cpu_seconds"] * 1000 / r["created"]
                                                    for r in rows if r["worker_cpu_seconds"] and r["created"]),
            "worker_cpu_share_median": median(r["worker_cpu_seconds"] / r["seconds"]
                                              for r in rows if r["worker_cpu_seconds"] and r["seconds"]),
            "fake_cpu_share_median": median(r["fake_cpu_seconds"] / r["seconds"]
                                            for r in rows if r["fake_cpu_seconds"] and r["seconds"]),
            "exactly_once_all_rounds": all(r["exactly_once"]["ok"] for r in rows),
            "store_delivered_all_rounds": all(r["ok"] for r in rows)}
        if rows[0]["scenario"] == "limited":
            v["fraction_of_limit_median"] = median(r.get("fraction_of_limit") for r in rows)
            for name in ("fraction_of_limit", "fraction_of_limit_min_period", "too_many_after_first_period",
                         "whole_periods"):
                v[f"{name}_rounds"] = [r.get(name) for r in rows]
    return out


def print_report(summary: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\n{'store/scenario':<24}{'links/s':>9}  {'rounds':<18}{'of limit':>9}  {'rounds':<20}{'429s total':>12}"
          f"{'after 1st':>11}{'exactly once':>14}{'worker CPU':>12}{'share':>7}{'fake':>6}{'calls/link':>12}")
    print(f"{'':<24}{'(median)':>9}  {'':<18}{'(median)':>9}  {'':<57}{'ms/link':>12}")
    for key, v in summary.items():
        print(f"{key:<24}{show(v['links_per_second_median'], '.1f'):>9}  "
              f"{harness.joined(v['links_per_second_rounds']):<18}"
              f"{show(v.get('fraction_of_limit_median'), '.3f'):>9}  "
              f"{harness.joined(v.get('fraction_of_limit_rounds', []), '.3f') or '-':<20}"
              f"{harness.joined(v['too_many_total_rounds'], 'd'):>12}"
              f"{harness.joined(v.get('too_many_after_first_period_rounds', []), 'd') or '-':>11}"
              f"{'yes' if v['exactly_once_all_rounds'] and v['store_delivered_all_rounds'] else 'NO':>14}"
              f"{show(v['worker_cpu_ms_per_link_median'], '.2f'):>12}{show(v['worker_cpu_share_median'], '.0%'):>7}"
              f"{show(v['fake_cpu_share_median'], '.0%'):>6}{show(v['calls_per_link_median'], '.3f'):>12}")
    print()
    for key, v in summary.items():
        if "fraction_of_limit_median" in v:
            fraction, after = v["fraction_of_limit_median"], v["too_many_after_first_period_rounds"]
            late = "none" if all(x == 0 for x in after) else f"{sum(x or 0 for x in after)} over all rounds"
            print(f"{key}: achieved {show(fraction, '.3f')} of {args.limit} per {args.period:g} s "
                  f"({'meets' if fraction is not None and fraction >= TARGET_FRACTION else 'BELOW'} the target of "
                  f"{TARGET_FRACTION}; worst whole period per round: "
                  f"{harness.joined(v['fraction_of_limit_min_period_rounds'], '.2f')}); 429s after the first period: "
                  f"{late} (target: none)")
        if "/trickle" in key:
            print(f"{key}: {show(v['calls_per_link_median'], '.3f')} Datadog calls per link with the storm's links "
                  f"planned {args.trickle_rate:g} a second (rounds {harness.joined(v['calls_per_link_rounds'], '.3f')}"
                  "); a listing serves only the links planned before it, and a case is listed at most once a "
                  "DD_LINK_LIST_INTERVAL while its links keep coming")
        if "/storm" in key:
            per_link = v["calls_per_link_median"]
            print(f"{key}: {show(per_link, '.3f')} Datadog calls per link (rounds "
                  f"{harness.joined(v['calls_per_link_rounds'], '.3f')}; "
                  f"{'meets' if per_link is not None and per_link <= STORM_TARGET else 'ABOVE'} the target of "
                  f"{STORM_TARGET} or fewer)")
    for key, v in summary.items():
        other = summary.get(key.replace("/unlimited", "/limited"), {})
        if key.endswith("/unlimited") and v["links_per_second_median"] and other.get("links_per_second_median"):
            print(f"{key}: {v['links_per_second_median'] / (args.limit / args.period):.1f}x the limit of the limited "
                  "scenario (unlimited links/s / limit)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the runs take turns in each")
    parser.add_argument("--stores", default="sqlite", help="comma-separated, from: sqlite, postgresql")
    parser.add_argument("--scenarios", default="unlimited,limited,storm", help="comma-separated")
    parser.add_argument("--links", type=int, default=2000, help="links planned for the unlimited scenario")
    parser.add_argument("--limit", type=int, default=50, help="link creations the fake allows per period")
    parser.add_argument("--period", type=float, default=1.0, help="seconds per rate-limit period")
    parser.add_argument("--periods", type=int, default=20, help="limited scenario: plan limit x periods links")
    parser.add_argument("--cases", type=int, default=20, help="distinct cases the links point at (the fake knows them)")
    parser.add_argument("--storm-links", type=int, default=100, help="storm scenario: links planned at once")
    parser.add_argument("--storm-cases", type=int, default=10, help="storm scenario: distinct cases they point at")
    parser.add_argument("--trickle-rate", type=float, default=10.0, help="trickle scenario: links planned a second")
    parser.add_argument("--baseline", help="a commit (or source folder) whose worker runs every scenario too")
    parser.add_argument("--concurrency", type=int, help="WORKER_CONCURRENCY of the worker (default: caselink's)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the queue and the rate limit")
    parser.add_argument("--timeout", type=float, help="seconds a run may take (default: from its size)")
    harness.add_run_options(parser, postgres=True)
    args = parser.parse_args(argv)
    args.stores = harness.listed(parser, "--stores", args.stores, ("sqlite", "postgresql"))
    args.scenarios = harness.listed(parser, "--scenarios", args.scenarios, ("unlimited", "limited", "storm", "trickle"))
    if min(args.limit, args.cases, args.storm_cases) < 1 or args.period <= 0 or args.periods < 3 \
            or min(args.links, args.storm_links) < 2:
        parser.error("--limit, --cases, --storm-cases >= 1, --period > 0, --periods >= 3, --links, --storm-links >= 2")
    args.case_keys = [f"BENCH-{n}" for n in range(1, max(args.cases, args.storm_cases) + 1)]
    results: list[dict[str, Any]] = []
    with harness.Run("delivery", args, argv) as run:
        if "postgresql" in args.stores:
            run.databases.check_postgres()
        codes = [("this", ROOT)] + ([(args.baseline, harness.source_tree(args.baseline, run.workdir))]
                                    if args.baseline else [])
        # Trickle plans with this tree's store, which an older tree's schema may not hold: this tree's worker only.
        runs = [(code, store, scenario) for code in codes for store in args.stores for scenario in args.scenarios
                if scenario != "trickle" or code[0] == "this"]
        fake = harness.Fake(run.workdir, args.case_keys).start()
        run.started(fake.process)
        print(f"machine: {run.document['machine']}")
        print(f"fake Datadog on {fake.url}; {args.cases} cases; unlimited: {args.links} links; limited: "
              f"{args.limit * args.periods} links at {args.limit} per {args.period:g} s; {args.workers} worker "
              f"process(es), concurrency {args.concurrency or 'default (WORKER_CONCURRENCY unset)'}", flush=True)
        for number in range(1, args.rounds + 1):
            for (code, root), store, scenario in harness.rotated(runs, number):
                r = run_once(args, run, fake, store, scenario, number, code, root)
                results.append(r)
                once = r["exactly_once"]
                print(f"round {number} {code} {store:<10} {scenario:<9} planned {r['planned']} (in "
                      f"{r['plan_seconds']:.1f} s), created {r['created']} in {r['seconds']} s: "
                      f"{r['links_per_second']} "
                      f"links/s (worker CPU {r['worker_cpu_seconds']} s); 429s {r['too_many_total']}"
                      + (f" ({r.get('too_many_after_first_period')} after the first period); of limit "
                         f"{r.get('fraction_of_limit')} over {r.get('whole_periods')} whole periods "
                         f"{r.get('created_per_whole_period')}" if scenario == "limited" else "")
                      + f"; exactly once: {'ok' if r['ok'] else 'FAILED'} ({once['distinct_at_fake']} distinct of "
                      f"{once['planned']}, {once['duplicated']} duplicated, {once['missing']} missing, "
                      f"{once['unexpected']} unexpected; store {r['store_states']}); requests {dict(r['requests'])} "
                      f"({r['calls_per_link']} per link)", flush=True)
    summary = summarise(results)
    print_report(summary, args)
    run.write(target_fraction=TARGET_FRACTION, summary=summary, runs=results)
    failed = [r for r in results if not r["ok"]]
    if failed:
        print(f"{len(failed)} run(s) did not deliver every planned link exactly once", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
