"""How fast the status page answers with 100,000 events stored: p50 / p95 / max per page.

Fills a throwaway database as webhooks would (links in every state, a learned rate limit), serves
it with caselink in dry-run, signs in, and asks each page `--requests` times, one at a time.

    python bench/pages.py                       # SQLite, 100,000 events, 40 requests per page
    python bench/pages.py --stores sqlite,postgresql --events 100000
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from typing import Any

import harness
import requests

from caselink.events import EntityRef
from caselink.events import Event
from caselink.rules import load_rules
from caselink.schema import links
from caselink.store import Store

SOURCES = ("datadog", "pagerduty", "opsgenie", "alertmanager", "grafana")
BUDGET_MS = 100.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events to store (default 100000)")
    parser.add_argument("--requests", type=int, default=40, help="measured requests per page (default 40)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured requests per page first (default 3)")
    parser.add_argument("--stores", default="sqlite", help="comma-separated: sqlite, postgresql")
    harness.add_run_options(parser, postgres=True)
    args = parser.parse_args(argv)
    args.stores = harness.listed(parser, "--stores", args.stores, ("sqlite", "postgresql"))
    return args


def fill(database_url: str, count: int, seed: int = 14) -> dict[str, Any]:
    """Store `count` events as webhooks would, then spread their links over every state."""
    rng = random.Random(seed)
    ruleset = load_rules(harness.ROOT / "rules.yaml")
    store = Store(harness.sqlalchemy_url(database_url))
    started = time.monotonic()
    try:
        batch: list[Any] = []
        for number in range(count):
            event = _event(number, rng)
            batch.append((event, ruleset.evaluate(event)))
            if len(batch) == 500 or number == count - 1:
                store.record(batch, ruleset=ruleset.digest, dry_run=False, now=time.time() - (count - number))
                batch = []
        with store.transaction() as connection:
            ids = [row.id for row in connection.execute(links.select().with_only_columns(links.c.id))]
            rng.shuffle(ids)
            dead, pending = ids[:300], ids[300:350]
            connection.execute(
                links.update()
                .where(links.c.id.in_(dead))
                .values(state="dead", attempts=40, last_status=404, last_error="case does not exist")
            )
            connection.execute(
                links.update()
                .where(links.c.id.not_in(dead + pending))
                .values(state="delivered", outcome="created", datadog_link_id="dd", delivered_at=time.time())
            )
        store.learn_rate_limit("POST /api/v2/cases/link", "cases_link_create", 100, 10.0)
        newest, _ = store.event_bounds()
        counts = store.count_links()
    finally:
        store.dispose()
    return {"seconds": round(time.monotonic() - started, 1), "newest_event": newest, "links": counts}


def _event(number: int, rng: random.Random) -> Event:
    source = "datadog" if rng.random() < 0.6 else rng.choice(SOURCES[1:])
    kind = rng.choice(("incident.created", "incident.updated", "page.escalated", "case.created"))
    if source != "datadog":
        kind = rng.choice(("incident.triggered", "alert.create", "firing"))
    case = f"OPS-{rng.randrange(20_000)}" if rng.random() < 0.4 else None
    title = f"{rng.choice(('Checkout', 'Payments', 'Search', 'Login'))} latency above SLO on host-{number % 977}"
    if case:
        title += f", see {case}"
    severity = rng.choice(("SEV-1", "SEV-2", "SEV-3", "SEV-4"))
    payload = {
        "event": kind,
        "id": f"bench-{number}",
        "incident": {"id": f"00000000-0000-4000-8000-{number:012d}", "title": title, "severity": severity},
        "tags": "env:prod,service:payments-api,team:checkout",
    }
    return Event(
        source=source,
        kind=kind,
        dedup_key=f"bench-{number}",
        entity=EntityRef("INCIDENT", f"00000000-0000-4000-8000-{number:012d}") if source == "datadog" else None,
        title=title,
        message="Payments API p99 > 2s since 09:12 UTC. Suspect the connection pool change.",
        severity=severity,
        tags={"service": ["payments-api"], "team": ["checkout"]},
        payload=payload,
    )


def signed_in(base: str) -> requests.Session:
    session = requests.Session()
    form = session.get(base + "/login", timeout=30).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    answer = session.post(
        base + "/login", data={"csrf_token": token, "token": harness.ADMIN_TOKEN, "next": "/"}, timeout=30
    )
    answer.raise_for_status()
    return session


def pages(session: requests.Session, base: str, newest: int) -> dict[str, str]:
    """The pages to measure: each page of the status page, with filters and deep cursors."""
    deep_links = session.get(base + "/links?state=delivered", timeout=30).text
    cursor = re.search(r'rel="next" href="([^"]+)"', deep_links)
    return {
        "overview": "/",
        "events": "/events",
        "events, deep cursor": f"/events?before={max(newest // 100, 2)}",
        "events, outcome=linked": "/events?outcome=linked",
        "events, outcome=rejected (none stored)": "/events?outcome=rejected",
        "events, source=pagerduty": "/events?source=pagerduty",
        "events, text (rare)": "/events?q=host-976",
        "event (explain)": f"/events/{newest // 2}",
        "links": "/links",
        "links, state=dead": "/links?state=dead",
        "links, state=delivered": "/links?state=delivered",
        "links, state=delivered, page 2": cursor.group(1).replace("&amp;", "&") if cursor else "/links?state=delivered",
        "rules": "/rules",
    }


def measure(session: requests.Session, url: str, warmup: int, count: int) -> dict[str, Any]:
    for _ in range(warmup):
        session.get(url, timeout=30).raise_for_status()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        answer = session.get(url, timeout=30)
        times.append((time.perf_counter() - started) * 1000)
        if answer.status_code != 200:
            raise RuntimeError(f"{url} answered {answer.status_code}: {answer.text[:300]}")
    times.sort()
    return {
        "p50_ms": round(harness.percentile(times, 50), 1),
        "p95_ms": round(harness.percentile(times, 95), 1),
        "max_ms": round(times[-1], 1),
        "bytes": len(answer.content),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, Any] = {}
    with harness.Run("pages", args, argv) as run:
        if "postgresql" in args.stores:
            run.databases.check_postgres()
        for store in args.stores:
            database_url = run.databases.new(store, "pages")
            # Two processes, so that nothing moves the links while the pages are measured.
            env = harness.caselink_env(database_url, WEB_CONCURRENCY="2", LOG_LEVEL="WARNING")
            harness.migrate(env)
            print(f"{store}: storing {args.events} events …", flush=True)
            filled = fill(database_url, args.events)
            print(f"{store}: stored in {filled['seconds']} s; links {filled['links']}", flush=True)
            server = run.serve(harness.Server(f"web-{store}", env, run.workdir))
            session = signed_in(server.url)
            figures = {}
            for name, path in pages(session, server.url, filled["newest_event"]).items():
                row = figures[name] = dict(measure(session, server.url + path, args.warmup, args.requests), path=path)
                print(f"  {store:<10} {name:<40} p50 {row['p50_ms']:>6} ms  p95 {row['p95_ms']:>6} ms", flush=True)
            run.stop(server)
            results[store] = {"fill": filled, "pages": figures}
    worst = max(row["p95_ms"] for store in results.values() for row in store["pages"].values())
    print(f"worst p95 {worst} ms (budget {BUDGET_MS:g} ms)")
    run.write(events=args.events, stores=results)
    return 0 if worst <= BUDGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
