"""Command line, through Flask's own: `flask --app app rules|links|worker|replay|db …`."""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from flask import Flask
from flask import current_app
from flask.cli import AppGroup
from flask.cli import with_appcontext

from caselink.errors import CaselinkError
from caselink.errors import RulesError
from caselink.events import EntityRef
from caselink.events import Event
from caselink.events import Headers
from caselink.events import WebhookRequest
from caselink.lint import WARNING
from caselink.lint import lint
from caselink.rules import PlannedLink
from caselink.rules import RuleSet
from caselink.rules import load_rules
from caselink.schema import LINK_STATES
from caselink.service import Service

rules_cli = AppGroup("rules", help="Check, test and explain rules.")
links_cli = AppGroup("links", help="Inspect and re-drive link deliveries.")
db_cli = AppGroup("db", help="Database schema migrations.")
events_cli = AppGroup("events", help="Inspect the events received, rejected deliveries included.")


def _service() -> Service:
    return current_app.extensions["caselink"]


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
    svc = _service()
    ruleset = _load(file)
    failures = total = 0
    for rule in ruleset.rules:
        # A switched-off rule's examples still say what it does when switched on.
        trial = (
            ruleset
            if rule.enabled
            else replace(
                ruleset,
                rules=tuple(replace(other, enabled=True) if other is rule else other for other in ruleset.rules),
            )
        )
        for index, example in enumerate(rule.examples):
            total += 1
            body = json.dumps(example.payload).encode()
            request = WebhookRequest(
                example.source, body, Headers({"Content-Type": "application/json"}), "application/json", time.time()
            )
            try:
                events = svc.events_from(request, authenticate=False)
            except CaselinkError as exc:
                failures += 1
                click.echo(f"FAIL {rule.name} examples[{index}] ({ruleset.path}:{example.line}): {exc.message}")
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
                click.echo(f"ok   {rule.name} examples[{index}]")
                continue
            failures += 1
            click.echo(f"FAIL {rule.name} examples[{index}] ({ruleset.path}:{example.line})")
            for link in expected:
                if link not in got:
                    click.echo(f"  - expected {link}")
            for link in got:
                if link not in expected:
                    click.echo(f"  + planned  {link}")
            for note in notes:
                click.echo(f"    {note}")
    click.echo(f"{total - failures} of {total} examples passed")
    if failures:
        sys.exit(1)


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
    report = []
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
@with_appcontext
def replay(since: str, rules_file: str | None, apply: bool) -> None:
    """Re-evaluate stored events: links the rules would add and no longer make."""
    svc = _service()
    ruleset = _load(rules_file)
    start = time.time() - _duration(since)
    events = added = dropped = 0
    for row in svc.store.events_since(start):
        if row["kind"] == "rejected":
            continue  # a body caselink could not read holds nothing for rules to see
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


def _duration(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if not match:
        raise click.BadParameter("use a number and a unit: 90s, 30m, 24h, 7d", param_hint="--since")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


@click.command("worker")
@click.option("--once", is_flag=True, help="Deliver what is due now, then exit.")
@click.option("--grace", default=20.0, show_default=True, help="Seconds to finish deliveries on SIGTERM.")
@with_appcontext
def worker(once: bool, grace: float) -> None:
    """Run the delivery worker in the foreground."""
    svc = _service()
    if svc.settings.dry_run:
        click.echo(f"caselink worker: dry-run ({svc.settings.dry_run_reason}); nothing to deliver", err=True)
        sys.exit(1)
    try:
        svc.store.check_schema()
    except CaselinkError as exc:
        click.echo(f"caselink worker: {exc.message}", err=True)
        sys.exit(1)
    delivery = svc.new_worker()
    if once:
        delivery.run_until_idle()
        return

    def _stop(signum: int, _frame: Any) -> None:
        delivery.stop_soon()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    delivery.run()
    delivery.stop(grace)


@links_cli.command("list")
@click.option("--state", type=click.Choice(LINK_STATES), help="Only links in this state.")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def links_list(state: str | None, limit: int, as_json: bool) -> None:
    """List links, newest first."""
    rows = _service().store.list_links(state=state, limit=limit)
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


@links_cli.command("retry")
@click.argument("link_id", required=False, type=int)
@click.option("--dead", is_flag=True, help="Retry every dead link.")
def links_retry(link_id: int | None, dead: bool) -> None:
    """Send a dead link (or every dead link) again."""
    store = _service().store
    if dead == (link_id is not None):
        raise click.UsageError("give a link ID or --dead, not both or neither")
    if dead:
        click.echo(f"{store.retry_dead()} dead link(s) queued again")
        return
    try:
        row = store.retry(link_id)
    except CaselinkError as exc:
        click.echo(exc.message, err=True)
        sys.exit(1)
    click.echo(f"link #{row['id']} queued again: {row['parent']} {row['relationship']} {row['child']}")


@events_cli.command("list")
@click.option("--source", help="Only events from this source.")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def events_list(source: str | None, limit: int, as_json: bool) -> None:
    """List events, newest first; a rejected delivery shows why (its raw body: `GET /api/events/<id>`)."""
    rows = _service().store.list_events(limit=limit, source=source)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        line = f"#{row['id']:<6} {row['received_at']} {row['source']:<12} {row['kind']}"
        if row["title"]:
            line += f"  {row['title']}"
        if row["problem"]:
            line += f"\n        problem: {row['problem']}"
        click.echo(line)
    if not rows:
        click.echo("no events" + (f" from {source}" if source else ""))


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Bring the database schema up to this release."""
    from caselink import migrations

    store = _service().store
    before = migrations.current_revision(store.engine)
    migrations.upgrade(store.engine)
    after = migrations.current_revision(store.engine)
    click.echo(f"database schema: {before or 'empty'} -> {after}")


@db_cli.command("current")
def db_current() -> None:
    """Show the schema revision of the database and of this release."""
    from caselink import migrations

    store = _service().store
    click.echo(
        f"database: {migrations.current_revision(store.engine) or 'empty'}; release: {migrations.head_revision()}"
    )


def register(app: Flask) -> None:
    for command in (rules_cli, links_cli, events_cli, db_cli, replay, worker):
        app.cli.add_command(command)
