"""Command line, through Flask's own: `flask --app app rules|links|worker|replay|db …`."""

from __future__ import annotations

import functools
import json
import re
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from flask import Flask
from flask import current_app
from flask.cli import AppGroup
from flask.cli import ScriptInfo
from flask.cli import with_appcontext
from sqlalchemy.exc import DBAPIError

from caselink.config import parse_duration
from caselink.errors import CaselinkError
from caselink.errors import RulesError
from caselink.errors import StoreUnavailableError
from caselink.events import Event
from caselink.events import Headers
from caselink.events import WebhookRequest
from caselink.housekeeping import Housekeeper
from caselink.rules import RuleSet
from caselink.rules import load_rules
from caselink.rules.lint import WARNING
from caselink.rules.lint import lint
from caselink.schema import LINK_STATES
from caselink.service import RULE_STATS_WINDOW
from caselink.service import ExampleResult
from caselink.service import Service
from caselink.store import EVENT_OUTCOMES
from caselink.store import RuleStats
from caselink.store import Store
from caselink.store import database_error
from caselink.traces import event_from_row
from caselink.traces import matched_entries
from caselink.worker import PassReport

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


# Characters a terminal acts on instead of showing: C0 (with tab and newline: one record, one
# line), DEL, C1, and the bidirectional controls that reorder what is shown (Trojan Source).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with every control character shown as its escape (`\\x1b`, `\\r`, `\\u202e`), for
    a terminal: what senders wrote can neither move the cursor, retitle the window, nor hide
    what follows it. Backslashes stay as they are."""
    return _UNPRINTABLE.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"), text)


def _say(line: str, *, err: bool = False) -> None:
    """Print a human-readable line that holds stored (sender) text."""
    click.echo(printable(line), err=err)


def _reading(verbose: bool, *, check: bool = True, create: bool = False) -> Store:
    """The store, after saying which database it is when asked, and checking its schema
    (a database that is not caselink's, not yet migrated, or not there, is named, not a
    traceback). Only a command that `create`s may go on without a SQLite file there."""
    store = _service().store
    if verbose:
        click.echo(f"database: {store.describe()}", err=True)
    if check or not create:
        try:
            if check:
                store.check_schema()
            else:
                store.check_exists()
        except StoreUnavailableError:
            raise  # said in one line naming DATABASE_URL (_plain_errors)
        except CaselinkError as exc:
            click.echo(f"DATABASE_URL ({store.describe()}): {exc.message}", err=True)
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
    results = _service().test_examples(ruleset)
    failures = 0
    for result in results:
        if result.passed:
            click.echo(f"ok   {result.rule} examples[{result.index}]")
            continue
        failures += 1
        click.echo(_failure(ruleset, result))
    click.echo(f"{len(results) - failures} of {len(results)} examples passed")
    if failures:
        sys.exit(1)


def _failure(ruleset: RuleSet, result: ExampleResult) -> str:
    """A failed example as a diff: the links expected but not planned (-) and planned but not expected (+)."""
    heading = f"FAIL {result.rule} examples[{result.index}] ({ruleset.path}:{result.line})"
    if result.error is not None:
        return f"{heading}: {result.error}"
    lines = [heading]
    lines += [f"  - expected {link}" for link in result.missing]
    lines += [f"  + planned  {link}" for link in result.unexpected]
    lines += [f"    {note}" for note in result.notes]
    return "\n".join(lines)


@rules_cli.command("stats")
@click.option("--since", default=f"{RULE_STATS_WINDOW.days}d", show_default=True, help="The window: 24h, 7d, 30d.")
@click.option("--rules", "rules_file", help="Rules file whose rules to list (default: RULES_FILE).")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@_verbose_option
def rules_stats(since: str, rules_file: str | None, as_json: bool, verbose: bool) -> None:
    """Per rule: events matched, links planned and delivered, last match; all time and in the window.

    Flags rules in force with no match in the window and rules whose examples fail.
    Counted from stored events by the delivery worker's housekeeping a few seconds
    after they arrive (on PostgreSQL, 30 s), and kept when events are pruned.
    """
    seconds = _duration(since)
    if seconds < 3600:
        # The counts are kept by the hour: a shorter window would silently be a whole hour or two.
        raise click.BadParameter(
            f"{since} is shorter than an hour; the per-rule counts are kept by the hour, so the "
            "window is at least 1h (and starts at the top of an hour)",
            param_hint="--since",
        )
    window = timedelta(seconds=seconds)
    store = _reading(verbose)
    ruleset = _load(rules_file)
    reports = _service().rule_reports(ruleset, window)
    report: list[dict[str, Any]] = [
        {
            "rule": item.rule.name,
            "all_time": _stats_dict(item.all_time),
            "window": dict(_stats_dict(item.window), since=since),
            "flags": item.flags(since),
        }
        for item in reports.rules
    ]
    retired = reports.retired
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
    if not any(item.all_time.matched or item.all_time.links_delivered for item in reports.rules) and not retired:
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
                "links": [link.as_dict() for link in evaluation.links],
            }
        )
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for item in report:
        event = item["event"]
        _say(f"event {event['kind']} from {event['source']}" + (f" about {event['entity']}" if event["entity"] else ""))
        _say(f"  dedup key: {event['dedup_key']}")
        if event.get("problem"):
            _say(f"  problem: {event['problem']}")
        for outcome in item["rules"]:
            line = f"  {outcome['rule']}: {outcome['outcome']}"
            if outcome.get("reason"):
                line += f" — {outcome['reason']}"
            _say(line)
            for link in outcome.get("links", []):
                mode = " (dry-run)" if outcome.get("mode") == "dry-run" else ""
                _say(f"      plans {link['parent']} {link['relationship']} {link['child']}{mode}")
            for problem in outcome.get("problems", []):
                _say(f"      problem: {problem}")
        _say(f"  {len(item['links'])} link(s) planned")


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
    events = added = dropped = waiting = 0
    for row in svc.store.events_since(start):
        if row["kind"] == "rejected":
            continue  # a body caselink could not read holds nothing for rules to see
        if row["deferred"]:
            waiting += 1  # housekeeping evaluates it with the rules in force, and plans its links then
            continue
        events += 1
        event = event_from_row(row)
        evaluation = ruleset.evaluate(event)
        planned = {str(link): (outcome, link) for outcome, link in evaluation.planned}
        before = {
            f"{link['parent']} {link['relationship']} {link['child']}"
            for outcome in matched_entries(row["trace"])
            for link in outcome.get("links", [])
        }
        new = [key for key in planned if key not in before]
        gone = sorted(before - set(planned))
        for key in new:
            _say(f"+ event {row['id']}: {key}  (rule {planned[key][0].rule})")
        for key in gone:
            _say(f"- event {row['id']}: {key}  (no longer planned; a made link is not removed)")
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
    if waiting:
        click.echo(f"{waiting} event(s) waiting for their evaluation left out: housekeeping evaluates them")
    if not events:
        _say_if_empty(svc.store)


@click.command("worker")
@click.option("--once", is_flag=True, help="Try what is due now once, then exit; non-zero if links remain undelivered.")
@click.option(
    "--grace",
    default=5.0,
    show_default=True,
    help="Seconds a call in flight may take to answer on SIGTERM/SIGINT before its link is released.",
)
@with_appcontext
def worker(once: bool, grace: float) -> None:
    """Run the delivery worker in the foreground, with housekeeping (deferred evaluations, per-rule
    statistics, retention); `--once` evaluates what webhooks deferred, then tries what is due.

    In dry-run it delivers nothing but stays up (a process manager would
    restart a worker that exits, forever) and keeps the housekeeping going.
    On SIGTERM or SIGINT it stops claiming, gives calls in flight --grace
    seconds, releases every link it still holds and exits; a second signal
    releases them at once.
    """
    svc = _service()
    try:
        svc.store.check_schema()
    except CaselinkError as exc:
        click.echo(f"caselink worker: {getattr(exc, 'operator', exc.message)}", err=True)
        sys.exit(1)
    if once:
        # What webhooks deferred is evaluated first, so that its links are delivered in this pass too.
        evaluated = 0
        while taken := svc.evaluate_deferred(100):
            evaluated += taken
        if evaluated:
            click.echo(f"caselink worker: {evaluated} deferred event(s) evaluated", err=True)
    if svc.settings.dry_run and once:
        click.echo(f"caselink worker: dry-run ({svc.settings.dry_run_reason}); nothing to deliver", err=True)
        sys.exit(1)
    stopping = threading.Event()
    running = None if svc.settings.dry_run else svc.new_worker()
    signalled: list[str] = []

    def _stop(signum: int, _frame: Any) -> None:
        signalled.append(signal.Signals(signum).name)
        stopping.set()
        if running is not None:
            if len(signalled) > 1:
                running.hurry()  # a second signal: stop waiting for calls in flight
            else:
                running.stop_soon()

    if once:
        assert running is not None
        # Put back afterwards: a caller running this in its own process (tests, a shell) keeps its handlers.
        before = {signum: signal.signal(signum, _stop) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            report = running.run_once()
        finally:
            running.stop(grace)
            for signum, handler in before.items():
                signal.signal(signum, handler)
        if signalled and "stopped" in report.reasons:
            report.note("stopped", f"by {signalled[0]}", first=False)
        _say_once(svc.store, report)
        return
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    housekeeper = Housekeeper(svc.store, svc.settings.event_retention, evaluate_deferred=svc.evaluate_deferred)
    housekeeper.start()
    if running is None:
        click.echo(
            f"caselink worker: dry-run ({svc.settings.dry_run_reason}): delivers nothing until the keys are set; "
            "staying up for housekeeping (per-rule statistics, retention)",
            err=True,
        )
        stopping.wait()
    else:
        running.run()
        running.stop(grace)
    housekeeper.stop()


def _say_once(store: Store, report: PassReport) -> None:
    """One line on how `worker --once` went; exit 1 when links due remain undelivered."""
    try:
        counts = store.count_links()
        waiting = f"{counts['pending'] + counts['claimed']}"
    except StoreUnavailableError:
        waiting = "some"
    if not report.complete:
        click.echo(f"caselink worker: {waiting} link(s) remain undelivered: {report.why()}", err=True)
        sys.exit(1)
    done = f"{report.delivered} delivered" + (f", {report.dead} dead letter(s)" if report.dead else "")
    later = "" if waiting in ("0", "some") else f"; {waiting} link(s) wait for a later retry"
    click.echo(f"caselink worker: {done}; nothing due is left{later}", err=True)


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
        _say(line)
        if row["last_error"] and row["state"] != "delivered":
            _say(f"        last error: {row['last_error']}")
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
    _reading(verbose)
    if dead == (link_id is not None):
        raise click.UsageError("give a link ID or --dead, not both or neither")
    try:
        if dead:
            click.echo(f"{svc.retry_dead()} dead link(s) queued again")
            return
        assert link_id is not None  # without --dead, the check above demands a link ID
        row = svc.retry_link(link_id)
    except CaselinkError as exc:
        _say(exc.message, err=True)
        sys.exit(1)
    _say(f"link #{row['id']} queued again: {row['parent']} {row['relationship']} {row['child']}")


@db_cli.command("upgrade")
@_verbose_option
def db_upgrade(verbose: bool) -> None:
    """Bring the database schema up to this release."""
    from caselink import migrations

    store = _reading(verbose, check=False, create=True)
    migrations.create(store.engine)
    before = migrations.current_revision(store.engine)
    # The rules in force: traces they made can be stored compactly (migration 0005).
    migrations.upgrade(store.engine, rule_set=_service().rules.current())
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
        _say(
            f"#{row['id']:<7} {row['received_at']}  {row['source']:<12} {row['kind']:<24}"
            f" links={'deferred' if row['deferred'] else row['links_planned']}{about}  {row['title'][:60]}"
        )
        if row["problem"]:
            _say(f"         problem: {row['problem']}")
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
        _say(f"{exc.message} (events are kept for EVENT_RETENTION={retention})", err=True)
        _say_if_empty(store)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    about = f" about {record['entity']}" if record["entity"] else ""
    _say(f"event #{record['id']} {record['kind']} from {record['source']}{about}, received {record['received_at']}")
    _say(f"  title: {record['title']}")
    _say(f"  dedup key: {record['dedup_key']}")
    if record["problem"]:
        _say(f"  problem: {record['problem']}")
    _say(f"  rules: {record['ruleset'][:12]}")
    for outcome in record["rules"]:
        line = f"  {outcome['rule']}: {outcome['outcome']}"
        if outcome.get("reason"):
            line += f" — {outcome['reason']}"
        _say(line)
        for link in outcome.get("links", []):
            mode = " (dry-run)" if outcome.get("mode") == "dry-run" else ""
            _say(f"      plans {link['parent']} {link['relationship']} {link['child']}{mode}")
        for problem in outcome.get("problems", []):
            _say(f"      problem: {problem}")
    for link in record["links"]:
        line = f"  link #{link['id']} {link['parent']} {link['relationship']} {link['child']}: {link['state']}"
        if link["datadog_link_id"]:
            line += f" (datadog id {link['datadog_link_id']})"
        if link["last_error"] and link["state"] != "delivered":
            line += f"; last error: {link['last_error']}"
        _say(line)
    _say(f"  {len(record['links'])} link(s) planned")


def register(app: Flask) -> None:
    for command in (rules_cli, links_cli, events_cli, db_cli, replay, worker):
        for each in command.commands.values() if isinstance(command, click.Group) else [command]:
            if each.callback is not None and not getattr(each.callback, "caselink_plain", False):
                each.callback = _plain_errors(each.callback)
        app.cli.add_command(command)


def _plain_errors(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command so that a database it cannot use, or any CaselinkError, is one line
    on stderr and exit status 1, never a traceback; the database is named by its
    DATABASE_URL with the password masked."""

    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        # The one line below says it all; the store's own log line would say it twice.
        _loaded_service().store.report_unavailable = False
        try:
            return callback(*args, **kwargs)
        except StoreUnavailableError as exc:
            message = exc.operator
        except CaselinkError as exc:
            message = exc.message
        except (DBAPIError, sqlite3.Error) as exc:
            error = database_error(_database_url(), exc)
            if error is None:
                raise
            message = error.operator
        _say(f"caselink: {message}", err=True)
        sys.exit(1)

    # A mark the command group reads on the function; mypy sees a plain function object.
    run.caselink_plain = True  # type: ignore[attr-defined]
    return run


def _database_url() -> str:
    return _loaded_service().settings.database_url


def _loaded_service() -> Service:
    """The service of the app the command runs with, outside its app context."""
    svc: Service = click.get_current_context().ensure_object(ScriptInfo).load_app().extensions["caselink"]
    return svc
