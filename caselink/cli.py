"""Command line, through Flask's own: `flask --app app rules|links|worker|replay|db …`."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from flask import Flask
from flask import current_app
from flask.cli import AppGroup
from flask.cli import with_appcontext

from caselink.config import parse_duration
from caselink.errors import CaselinkError
from caselink.errors import RulesError
from caselink.events import EntityRef
from caselink.events import Event
from caselink.events import Headers
from caselink.events import WebhookRequest
from caselink.housekeeping import Housekeeper
from caselink.lint import WARNING
from caselink.lint import lint
from caselink.rules import PlannedLink
from caselink.rules import RuleSet
from caselink.rules import load_rules
from caselink.schema import LINK_STATES
from caselink.service import Service
from caselink.store import EVENT_OUTCOMES
from caselink.store import RuleStats
from caselink.store import Store

rules_cli = AppGroup("rules", help="Check, test and explain rules.")
links_cli = AppGroup("links", help="Inspect and re-drive link deliveries.")
events_cli = AppGroup("events", help="Stored events and what the rules did with them.")
db_cli = AppGroup("db", help="Database schema migrations.")


def _service() -> Service:
    found: Service = current_app.extensions["caselink"]
    return found


def _load(path: str | None) -> RuleSet:
    svc = _service()
    target = Path(path) if path else svc.settings.rules_file
    try:
        return load_rules(target, sources=tuple(svc.handlers))
    except RulesError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        click.echo(f"{target}: {len(exc.problems)} problem(s); the rules were not loaded", err=True)
        sys.exit(1)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


def _verbose_option(command: Any) -> Any:
    """--verbose: say which database the command reads (never its password)."""
    return click.option("--verbose", "-v", is_flag=True, help="Say which database is read.")(command)


def _reading(verbose: bool, *, check: bool = True) -> Store:
    """The store, after saying which database it is when asked, and checking its schema
    (a database that is not caselink's, or not yet migrated, is named, not a traceback)."""
    store = _service().store
    if verbose:
        click.echo(f"database: {store.describe()}", err=True)
    if check:
        try:
            store.check_schema()
        except CaselinkError as exc:
            click.echo(f"{store.describe()}: {exc.message}", err=True)
            sys.exit(1)
    return store


def _say_if_empty(store: Store) -> None:
    """An empty store is usually the wrong one (another DATABASE_URL, another directory): say which."""
    if store.count_events() == 0:
        click.echo(f"{store.describe()} holds no events; is DATABASE_URL the database caselink serves with?", err=True)


@rules_cli.command("check")
@click.argument("file", required=False)
@click.option("--strict", is_flag=True, help="Exit 1 on any warning too (for CI); notes never fail.")
def rules_check(file: str | None, strict: bool) -> None:
    """Validate and lint a rules file (default: RULES_FILE); exit 1 with file:line errors."""
    ruleset = _load(file)
    findings = lint(ruleset, {name: handler.KINDS for name, handler in _service().handlers.items()})
    warnings = [*ruleset.warnings, *(str(found) for found in findings if found.level == WARNING)]
    notes = [str(found) for found in findings if found.level != WARNING]
    for line in (*warnings, *notes):
        click.echo(line, err=True)
    enabled = sum(1 for rule in ruleset.rules if rule.enabled)
    warned = f", {len(warnings)} warning(s)" if warnings else ""
    noted = f", {len(notes)} note(s)" if notes else ""
    click.echo(f"{ruleset.path}: ok, {len(ruleset.rules)} rules ({enabled} enabled){warned}{noted}")
    if strict and warnings:
        sys.exit(1)


@rules_cli.command("test")
@click.argument("file", required=False)
def rules_test(file: str | None) -> None:
    """Run every rule's examples; exit 1 on a mismatch, with a diff."""
    ruleset = _load(file)
    failures = total = 0
    for rule in ruleset.rules:
        for index, failure in enumerate(_example_results(ruleset, rule)):
            total += 1
            if failure is None:
                click.echo(f"ok   {rule.name} examples[{index}]")
                continue
            failures += 1
            click.echo(failure)
    click.echo(f"{total - failures} of {total} examples passed")
    if failures:
        sys.exit(1)


def _example_results(ruleset: RuleSet, rule: Any) -> list[str | None]:
    """For each of a rule's examples, None when it plans what it says, else what went wrong."""
    svc = _service()
    # A switched-off rule's examples still say what it does when switched on.
    trial = (
        ruleset
        if rule.enabled
        else replace(
            ruleset,
            rules=tuple(replace(other, enabled=True) if other is rule else other for other in ruleset.rules),
        )
    )
    results: list[str | None] = []
    for index, example in enumerate(rule.examples):
        body = json.dumps(example.payload).encode()
        request = WebhookRequest(
            example.source, body, Headers({"Content-Type": "application/json"}), "application/json", time.time()
        )
        try:
            events = svc.events_from(request, authenticate=False)
        except CaselinkError as exc:
            results.append(f"FAIL {rule.name} examples[{index}] ({ruleset.path}:{example.line}): {exc.message}")
            continue
        got: list[PlannedLink] = []
        notes: list[str] = []
        for event in events:
            for outcome in trial.evaluate(event).outcomes:
                if outcome.rule != rule.name:
                    continue
                got.extend(link for link in outcome.links if link not in got)
                if outcome.outcome != "matched":
                    notes.append(f"{outcome.outcome}: {outcome.reason}")
                notes.extend(outcome.problems)
        expected = list(example.links)
        if sorted(map(str, got)) == sorted(map(str, expected)):
            results.append(None)
            continue
        lines = [f"FAIL {rule.name} examples[{index}] ({ruleset.path}:{example.line})"]
        lines += [f"  - expected {link}" for link in expected if link not in got]
        lines += [f"  + planned  {link}" for link in got if link not in expected]
        lines += [f"    {note}" for note in notes]
        results.append("\n".join(lines))
    return results


@rules_cli.command("stats")
@click.option("--since", default="30d", show_default=True, help="The window: 24h, 7d, 30d.")
@click.option("--rules", "rules_file", help="Rules file whose rules to list (default: RULES_FILE).")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@_verbose_option
def rules_stats(since: str, rules_file: str | None, as_json: bool, verbose: bool) -> None:
    """Per rule: events matched, links planned and delivered, last match; all time and in the window.

    Flags rules in force with no match in the window and rules whose examples fail.
    Counted from stored events by the delivery worker's housekeeping a few seconds
    after they arrive (on PostgreSQL, 30 s), and kept when events are pruned.
    """
    window = _duration(since)
    store = _reading(verbose)
    ruleset = _load(rules_file)
    start = datetime.fromtimestamp(time.time() - window, UTC)
    ever, recent = store.rule_stats(None), store.rule_stats(start)
    report: list[dict[str, Any]] = []
    for rule in ruleset.rules:
        failing = [result for result in _example_results(ruleset, rule) if result is not None]
        total, windowed = ever.get(rule.name), recent.get(rule.name)
        flags = []
        if rule.enabled and (windowed is None or windowed.matched == 0):
            flags.append(f"no match in {since}")
        if not rule.enabled:
            flags.append("disabled")
        if failing:
            flags.append(f"{len(failing)} example(s) fail")
        report.append(
            {
                "rule": rule.name,
                "all_time": _stats_dict(total),
                "window": dict(_stats_dict(windowed), since=since),
                "flags": flags,
            }
        )
    retired = sorted(set(ever) - {rule.name for rule in ruleset.rules})
    if as_json:
        click.echo(json.dumps({"rules": report, "rules_no_longer_in_force": retired}, indent=2))
        return
    click.echo(f"{'rule':<44} {'matched':>9} {'planned':>9} {'delivered':>9}  last matched")
    for item in report:
        for label, stats in ((item["rule"], item["all_time"]), (f"  last {since}", item["window"])):
            last = stats["last_matched_at"] or "never"
            click.echo(
                f"{label:<44} {stats['matched']:>9} {stats['links_planned']:>9} {stats['links_delivered']:>9}  {last}"
            )
        for flag in item["flags"]:
            click.echo(f"  ! {flag}")
    if retired:
        click.echo(f"counted for rules no longer in {ruleset.path}: {', '.join(retired)}")
    if not ever:
        _say_if_empty(store)


def _stats_dict(stats: RuleStats | None) -> dict[str, Any]:
    if stats is None:
        return {"matched": 0, "links_planned": 0, "links_delivered": 0, "last_matched_at": None}
    return {
        "matched": stats.matched,
        "links_planned": stats.links_planned,
        "links_delivered": stats.links_delivered,
        "last_matched_at": stats.last_matched_at.strftime("%Y-%m-%dT%H:%M:%SZ") if stats.last_matched_at else None,
    }


@rules_cli.command("explain")
@click.argument("source")
@click.argument("payload", type=click.Path(exists=True, dir_okay=False))
@click.option("--rules", "rules_file", help="Rules file to use instead of RULES_FILE.")
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as JSON.")
def rules_explain(source: str, payload: str, rules_file: str | None, as_json: bool) -> None:
    """What PAYLOAD, sent to /webhooks/SOURCE, would do, rule by rule."""
    svc = _service()
    ruleset = _load(rules_file)
    body = Path(payload).read_bytes()
    content_type = "application/x-www-form-urlencoded" if body.lstrip()[:1] not in (b"{", b"[") else "application/json"
    request = WebhookRequest(source, body, Headers({"Content-Type": content_type}), content_type, time.time())
    try:
        events = svc.events_from(request, authenticate=False)
    except CaselinkError as exc:
        click.echo(f"{payload}: {exc.message}", err=True)
        sys.exit(1)
    report: list[dict[str, Any]] = []
    for event in events:
        evaluation = ruleset.evaluate(event)
        report.append(
            {
                "event": _event_summary(event),
                "rules": evaluation.trace(),
                "links": [link.as_dict() for _, link in evaluation.planned],
            }
        )
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for item in report:
        event = item["event"]
        click.echo(
            f"event {event['kind']} from {event['source']}" + (f" about {event['entity']}" if event["entity"] else "")
        )
        click.echo(f"  dedup key: {event['dedup_key']}")
        if event.get("problem"):
            click.echo(f"  problem: {event['problem']}")
        for outcome in item["rules"]:
            line = f"  {outcome['rule']}: {outcome['outcome']}"
            if outcome.get("reason"):
                line += f" — {outcome['reason']}"
            click.echo(line)
            for link in outcome.get("links", []):
                mode = " (dry-run)" if outcome.get("mode") == "dry-run" else ""
                click.echo(f"      plans {link['parent']} {link['relationship']} {link['child']}{mode}")
            for problem in outcome.get("problems", []):
                click.echo(f"      problem: {problem}")
        click.echo(f"  {len(item['links'])} link(s) planned")


def _event_summary(event: Event) -> dict[str, Any]:
    return {
        "source": event.source,
        "kind": event.kind,
        "entity": str(event.entity) if event.entity else None,
        "dedup_key": event.dedup_key,
        "title": event.title,
        "problem": event.problem,
    }


@click.command("replay")
@click.option("--since", default="24h", show_default=True, help="How far back: 30m, 24h, 7d.")
@click.option("--rules", "rules_file", help="Rules file to replay against (default: RULES_FILE).")
@click.option("--apply", is_flag=True, help="Plan the links the rules would add.")
@_verbose_option
@with_appcontext
def replay(since: str, rules_file: str | None, apply: bool, verbose: bool) -> None:
    """Re-evaluate stored events: links the rules would add and no longer make."""
    svc = _service()
    _reading(verbose)
    ruleset = _load(rules_file)
    start = time.time() - _duration(since)
    events = added = dropped = 0
    for row in svc.store.events_since(start):
        events += 1
        event = _stored_event(row)
        evaluation = ruleset.evaluate(event)
        planned = {str(link): (outcome, link) for outcome, link in evaluation.planned}
        before = {
            f"{link['parent']} {link['relationship']} {link['child']}"
            for outcome in row["trace"]
            for link in outcome.get("links", [])
        }
        new = [key for key in planned if key not in before]
        gone = sorted(before - set(planned))
        for key in new:
            click.echo(f"+ event {row['id']}: {key}  (rule {planned[key][0].rule})")
        for key in gone:
            click.echo(f"- event {row['id']}: {key}  (no longer planned; a made link is not removed)")
        added += len(new)
        dropped += len(gone)
        if apply and new:
            svc.store.add_plans(
                row["id"],
                [planned[key] for key in new],
                dry_run=svc.settings.dry_run,
                note=f"planned by `replay --apply` with {ruleset.path} ({ruleset.digest[:12]})",
            )
    verb = "planned" if apply else "would add"
    click.echo(f"{events} events since {since}: {verb} {added} link(s), {dropped} no longer planned")
    if not events:
        _say_if_empty(svc.store)


def _stored_event(row: dict[str, Any]) -> Event:
    entity = EntityRef(row["entity_type"], row["entity_id"]) if row["entity_type"] else None
    return Event(
        source=row["source"],
        kind=row["kind"],
        dedup_key=row["dedup_key"],
        entity=entity,
        title=row["title"],
        message=row["message"],
        severity=row["severity"],
        priority=row["priority"],
        status=row["status"],
        url=row["url"],
        tags=row["tags"] or {},
        occurred_at=row["occurred_at"],
        payload=row["payload"],
        problem=row["problem"],
    )


@click.command("worker")
@click.option("--once", is_flag=True, help="Deliver what is due now, then exit.")
@click.option("--grace", default=20.0, show_default=True, help="Seconds to finish deliveries on SIGTERM.")
@with_appcontext
def worker(once: bool, grace: float) -> None:
    """Run the delivery worker in the foreground, with housekeeping (per-rule statistics, retention).

    In dry-run it delivers nothing but stays up (a process manager would
    restart a worker that exits, forever) and keeps the housekeeping going.
    """
    svc = _service()
    try:
        svc.store.check_schema()
    except CaselinkError as exc:
        click.echo(f"caselink worker: {exc.message}", err=True)
        sys.exit(1)
    if svc.settings.dry_run and once:
        click.echo(f"caselink worker: dry-run ({svc.settings.dry_run_reason}); nothing to deliver", err=True)
        sys.exit(1)
    if once:
        svc.new_worker().run_until_idle()
        return
    stopping = threading.Event()
    housekeeper = Housekeeper(svc.store, svc.settings.event_retention)
    delivery = None if svc.settings.dry_run else svc.new_worker()

    def _stop(signum: int, _frame: Any) -> None:
        stopping.set()
        if delivery is not None:
            delivery.stop_soon()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    housekeeper.start()
    if delivery is None:
        click.echo(
            f"caselink worker: dry-run ({svc.settings.dry_run_reason}): delivers nothing until the keys are set; "
            "staying up for housekeeping (per-rule statistics, retention)",
            err=True,
        )
        stopping.wait()
    else:
        delivery.run()
        delivery.stop(grace)
    housekeeper.stop()


@links_cli.command("list")
@click.option("--state", type=click.Choice(LINK_STATES), help="Only links in this state.")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_verbose_option
def links_list(state: str | None, limit: int, as_json: bool, verbose: bool) -> None:
    """List links, newest first."""
    store = _reading(verbose)
    rows = store.list_links(state=state, limit=limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        planned = f"{row['parent']} {row['relationship']} {row['child']}"
        line = f"#{row['id']:<6} {row['state']:<9} {planned}  attempts={row['attempts']}"
        if row["datadog_link_id"]:
            line += f" datadog_id={row['datadog_link_id']}"
        if row["last_error"] and row["state"] != "delivered":
            line += f"\n        last error: {row['last_error']}"
        click.echo(line)
    if not rows:
        click.echo("no links" + (f" in state {state}" if state else ""))
        _say_if_empty(store)


@links_cli.command("retry")
@click.argument("link_id", required=False, type=int)
@click.option("--dead", is_flag=True, help="Retry every dead link.")
@_verbose_option
def links_retry(link_id: int | None, dead: bool, verbose: bool) -> None:
    """Send a dead link (or every dead link) again."""
    svc = _service()
    store = _reading(verbose)
    if dead == (link_id is not None):
        raise click.UsageError("give a link ID or --dead, not both or neither")
    if dead:
        click.echo(f"{store.retry_dead()} dead link(s) queued again")
        return
    assert link_id is not None  # without --dead, the check above demands a link ID
    try:
        row = svc.retry_link(link_id)
    except CaselinkError as exc:
        click.echo(exc.message, err=True)
        sys.exit(1)
    click.echo(f"link #{row['id']} queued again: {row['parent']} {row['relationship']} {row['child']}")


@db_cli.command("upgrade")
@_verbose_option
def db_upgrade(verbose: bool) -> None:
    """Bring the database schema up to this release."""
    from caselink import migrations

    store = _reading(verbose, check=False)
    before = migrations.current_revision(store.engine)
    migrations.upgrade(store.engine)
    after = migrations.current_revision(store.engine)
    click.echo(f"database schema: {before or 'empty'} -> {after}")


@db_cli.command("current")
@_verbose_option
def db_current(verbose: bool) -> None:
    """Show the schema revision of the database and of this release."""
    from caselink import migrations

    store = _reading(verbose, check=False)
    click.echo(
        f"database: {migrations.current_revision(store.engine) or 'empty'}; release: {migrations.head_revision()}"
    )


@db_cli.command("prune")
@click.option("--dry-run", is_flag=True, help="Say how many events would go; change nothing.")
@_verbose_option
def db_prune(dry_run: bool, verbose: bool) -> None:
    """Delete events older than EVENT_RETENTION now, as the delivery worker does in the background.

    Per-rule statistics are counted first and kept; events whose links are not
    final, and every link, are kept.
    """
    svc = _service()
    store = _reading(verbose)
    retention = svc.settings.event_retention
    report = Housekeeper(store, retention).round(dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"events older than {_days(retention)}: {verb} {report.deleted}, kept {report.kept} "
        f"whose links are not final; {report.counted} counted in the per-rule statistics first"
    )
    if not report.deleted and not report.kept:
        _say_if_empty(store)


def _days(seconds: float) -> str:
    return f"{seconds / 86400:g}d" if seconds >= 86400 else f"{seconds / 3600:g}h"


# -- events ---------------------------------------------------------------------


@events_cli.command("list")
@click.option("--source", help="Only events from this sender (datadog, pagerduty, …).")
@click.option("--kind", help="Only events of this kind (incident.created, alert.create, …).")
@click.option("--outcome", type=click.Choice(EVENT_OUTCOMES), help="Only events with this outcome.")
@click.option("--since", help="Only events received in this window: 30m, 24h, 7d.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True)
@_verbose_option
def events_list(
    source: str | None,
    kind: str | None,
    outcome: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
    verbose: bool,
) -> None:
    """Stored events, newest first; `events show ID` explains one."""
    store = _reading(verbose)
    start = time.time() - _duration(since) if since else None
    rows = store.find_events(source=source, kind=kind, outcome=outcome, since=start, limit=limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    for row in [] if as_json else rows:
        about = f" {row['entity']}" if row["entity"] else ""
        click.echo(
            f"#{row['id']:<7} {row['received_at']}  {row['source']:<12} {row['kind']:<24}"
            f" links={row['links_planned']}{about}  {row['title'][:60]}"
        )
        if row["problem"]:
            click.echo(f"         problem: {row['problem']}")
    if not rows:
        if not as_json:
            click.echo("no events match")
        _say_if_empty(store)


@events_cli.command("show")
@click.argument("event_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="The explain record as JSON (as GET /api/events/ID).")
@_verbose_option
def events_show(event_id: int, as_json: bool, verbose: bool) -> None:
    """The explain record of one event: every rule's outcome and the planned links' delivery state."""
    store = _reading(verbose)
    try:
        record = store.get_event(event_id)
    except CaselinkError as exc:
        retention = _days(_service().settings.event_retention)
        click.echo(f"{exc.message} (events are kept for EVENT_RETENTION={retention})", err=True)
        _say_if_empty(store)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    about = f" about {record['entity']}" if record["entity"] else ""
    click.echo(
        f"event #{record['id']} {record['kind']} from {record['source']}{about}, received {record['received_at']}"
    )
    click.echo(f"  title: {record['title']}")
    click.echo(f"  dedup key: {record['dedup_key']}")
    if record["problem"]:
        click.echo(f"  problem: {record['problem']}")
    click.echo(f"  rules: {record['ruleset'][:12]}")
    for outcome in record["rules"]:
        line = f"  {outcome['rule']}: {outcome['outcome']}"
        if outcome.get("reason"):
            line += f" — {outcome['reason']}"
        click.echo(line)
        for link in outcome.get("links", []):
            mode = " (dry-run)" if outcome.get("mode") == "dry-run" else ""
            click.echo(f"      plans {link['parent']} {link['relationship']} {link['child']}{mode}")
        for problem in outcome.get("problems", []):
            click.echo(f"      problem: {problem}")
    for link in record["links"]:
        line = f"  link #{link['id']} {link['parent']} {link['relationship']} {link['child']}: {link['state']}"
        if link["datadog_link_id"]:
            line += f" (datadog id {link['datadog_link_id']})"
        if link["last_error"] and link["state"] != "delivered":
            line += f"; last error: {link['last_error']}"
        click.echo(line)
    click.echo(f"  {len(record['links'])} link(s) planned")


def register(app: Flask) -> None:
    for command in (rules_cli, links_cli, events_cli, db_cli, replay, worker):
        app.cli.add_command(command)
