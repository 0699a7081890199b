"""The operator's view for real: gunicorn and `flask worker` processes, retention and per-rule
statistics on SQLite and PostgreSQL, a dry-run worker that stays up, bin/caselink and bin/serve."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from caselink.events import EntityRef
from caselink.events import Event
from caselink.rules import load_rules
from caselink.schema import events
from caselink.schema import links
from caselink.store import Store
from handlers import REGISTRY
from tests.servers import ROOT
from tests.servers import Process
from tests.servers import flask
from tests.servers import free_port
from tests.servers import wait_for

pytestmark = pytest.mark.slow

DAY = 86400.0
RULE = "incident-causes-mentioned-case"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request, stack) -> str:
    if request.param == "sqlite":
        return stack.database_url
    return request.getfixturevalue("postgres_url")


def open_store(url: str) -> Store:
    return Store(url.replace("postgresql://", "postgresql+psycopg://", 1))


def seed(store: Store, key: str, at: float, case: str, *, dry_run: bool = False) -> int:
    """An event stored as the webhook path stores it, at a simulated time in the past."""
    ruleset = load_rules(ROOT / "rules.yaml", sources=tuple(REGISTRY))
    event = Event(
        source="datadog",
        kind="incident.created",
        dedup_key=key,
        entity=EntityRef("INCIDENT", str(uuid.uuid5(uuid.NAMESPACE_URL, key))),
        title=f"Checkout down, see {case}",
        severity="SEV-1",
        payload={"id": key, "padding": "x" * 2000},
    )
    [stored] = store.record([(event, ruleset.evaluate(event))], ruleset=ruleset.digest, dry_run=dry_run, now=at)
    return stored.id


def incident(index: int, case: str) -> bytes:
    return json.dumps(
        {
            "event": "incident.created",
            "id": f"fresh-{index}",
            "incident": {"id": f"00000000-0000-4000-8000-{index:012d}", "title": f"see {case}", "severity": "SEV-1"},
        }
    ).encode()


def event_ids(store: Store) -> set[int]:
    with store.engine.connect() as connection:
        return set(connection.execute(sa.select(events.c.id)).scalars())


def metric(text: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def test_the_worker_prunes_old_events_keeps_unfinished_ones_and_every_link_and_keeps_the_statistics(
    stack, fake_datadog, database_url
):
    for number in range(1, 6):
        fake_datadog.add_case(f"OPS-{number}")
    shared = {"DATABASE_URL": database_url, "IN_PROCESS_WORKER": "false", "EVENT_RETENTION": "30d"}
    web = stack.service(**shared)
    store = open_store(database_url)
    old = {seed(store, f"old-{index}", time.time() - 40 * DAY + index, f"OPS-{index % 3 + 1}") for index in range(30)}
    waiting = seed(store, "waiting", time.time() - 40 * DAY, "OPS-99")
    with store.engine.begin() as connection:
        # A link still retrying (not due for an hour): its event is kept.
        connection.execute(
            links.update().where(links.c.child_ref == "OPS-99").values(next_attempt_at=time.time() + 3600)
        )
    for index in range(5):
        assert web.post("datadog", incident(index, "OPS-5")).status_code == 202
    fresh = event_ids(store) - old - {waiting}
    links_before = len(store.list_links(limit=1000))

    stack.worker(**shared)
    wait_for(lambda: not (event_ids(store) & old), timeout=30, interval=0.2, message="old events pruned")

    assert event_ids(store) == fresh | {waiting}
    assert len(store.list_links(limit=1000)) == links_before
    assert (
        store.get_link(max(row["id"] for row in store.list_links(limit=1000) if row["child"] == "CASE:OPS-99"))["state"]
        == "pending"
    )
    stats = json.loads(flask(stack.env(**shared), "rules", "stats", "--json").stdout)
    causes = next(item for item in stats["rules"] if item["rule"] == RULE)
    assert causes["all_time"]["matched"] >= 31  # the pruned events stay counted
    assert causes["all_time"]["links_delivered"] >= 3
    scraped = web.http.get(web.url + "/metrics", timeout=10).text
    assert metric(scraped, "caselink_rule_matches_total", f'{{rule="{RULE}"}}') == causes["all_time"]["matched"]
    assert (
        metric(scraped, "caselink_rule_links_planned_total", f'{{rule="{RULE}"}}')
        == (causes["all_time"]["links_planned"])
    )
    store.dispose()


def test_a_dry_run_worker_stays_up_delivers_nothing_keeps_house_and_stops_cleanly(stack):
    env = stack.env(DD_API_KEY="", DD_APP_KEY="")
    stack.migrate(env)
    store = open_store(stack.database_url)
    old = seed(store, "old", time.time() - 40 * DAY, "OPS-1", dry_run=True)
    young = seed(store, "young", time.time() - DAY, "OPS-1", dry_run=True)

    worker = stack.worker(DD_API_KEY="", DD_APP_KEY="")
    wait_for(lambda: old not in event_ids(store), timeout=20, interval=0.2, message="the old event pruned")
    time.sleep(1)

    assert worker.running
    assert event_ids(store) == {young}
    assert "delivers nothing until the keys are set" in worker.logs()
    assert worker.stop() == 0
    assert {row["state"] for row in store.list_links()} == {"dry_run"}
    store.dispose()


def test_rules_reload_gauge_reads_1_under_gunicorn_with_good_rules_and_per_rule_counters_appear(stack):
    web = stack.service(WEB_CONCURRENCY="2", DD_API_KEY="", DD_APP_KEY="")
    assert web.post("datadog", incident(1, "OPS-42")).status_code == 202

    def scraped() -> str | None:
        text = web.http.get(web.url + "/metrics", timeout=10).text
        return text if metric(text, "caselink_rule_matches_total", f'{{rule="{RULE}"}}') == 1 else None

    text = wait_for(scraped, timeout=20, interval=0.2, message="the match counted")
    assert metric(text, "caselink_rules_last_reload_successful") == 1.0
    assert metric(text, "caselink_rule_links_planned_total", f'{{rule="{RULE}"}}') == 1
    assert metric(text, "caselink_rule_matches_total", '{rule="page-escalates-to-mentioned-case"}') == 0


def test_the_file_in_force_gauge_reads_1_under_gunicorn_until_the_file_on_disk_differs_and_again_once_restored(
    stack, tmp_path: Path
):
    rules = tmp_path / "rules.yaml"
    good = (ROOT / "rules.yaml").read_text(encoding="utf-8")
    rules.write_text(good, encoding="utf-8")
    web = stack.service(WEB_CONCURRENCY="2", DD_API_KEY="", DD_APP_KEY="", RULES_FILE=str(rules))

    def gauge_reads(value: float) -> bool:
        # Webhooks make each worker look at the file (every 2 s at most); the scrape sums them all.
        web.post("datadog", incident(int(time.time() * 1000) % 10**9, "OPS-42"))
        text = web.http.get(web.url + "/metrics", timeout=10).text
        return metric(text, "caselink_rules_file_in_force") == value

    assert metric(web.http.get(web.url + "/metrics", timeout=10).text, "caselink_rules_file_in_force") == 1.0
    rules.write_text(good + "\n  - name: broken\n    whn: []\n", encoding="utf-8")
    wait_for(lambda: gauge_reads(0.0), timeout=20, interval=0.3, message="the gauge at 0 while the file is refused")
    rules.write_text(good, encoding="utf-8")
    wait_for(lambda: gauge_reads(1.0), timeout=20, interval=0.3, message="the gauge at 1 once the file is restored")


def _path_without_venv() -> str:
    return os.pathsep.join(part for part in os.environ["PATH"].split(os.pathsep) if ".venv" not in part)


def test_bin_caselink_runs_commands_from_any_directory_without_an_activated_venv(stack, tmp_path: Path):
    env = stack.env(DD_API_KEY="", DD_APP_KEY="", PATH=_path_without_venv())
    stack.migrate()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "payload.json").write_bytes((ROOT / "tests/fixtures/datadog/incident-created.json").read_bytes())

    def caselink(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ROOT / "bin" / "caselink"), *args],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    checked = caselink("rules", "check")
    explained = caselink("rules", "explain", "datadog", "payload.json")
    listed = caselink("events", "list", "--verbose")

    assert checked.returncode == 0, checked.stderr
    assert "rules (" in checked.stdout
    assert explained.returncode == 0, explained.stderr
    assert f"{RULE}: matched" in explained.stdout
    assert listed.returncode == 0, listed.stderr
    assert f"database: {stack.database_url}" in listed.stderr
    assert "holds no events" in listed.stderr


def test_bin_serve_says_what_it_is_doing_and_prints_the_url_it_serves(stack, tmp_path: Path):
    port = free_port()
    env = stack.env(DD_API_KEY="", DD_APP_KEY="", PORT=str(port), PATH=_path_without_venv())
    serve = Process("serve", [str(ROOT / "bin" / "serve")], env, tmp_path)
    stack.processes.append(serve)
    serve.start()

    wait_for(lambda: f"serving on http://localhost:{port}" in serve.logs(), timeout=120, interval=0.1)
    wait_for(lambda: _healthy(port), timeout=30, interval=0.1, message="bin/serve answering")

    output = serve.logs()
    assert "bringing the database schema up to date" in output
    assert output.index("bringing the database schema") < output.index("serving on")


def _healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False
