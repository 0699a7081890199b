"""A real sender: Debian's prometheus-alertmanager notifying caselink (gunicorn on loopback).

Alertmanager re-sends a still-firing group at every repeat_interval. A plain
repeat must be a duplicate; a repeat whose alert changed its annotations in
the meantime must be a new event, not swallowed as a duplicate.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from pathlib import Path

import pytest
import requests

from tests.rule_files import costly_rules_text
from tests.servers import Process
from tests.servers import base_env
from tests.servers import free_port
from tests.servers import wait_for

pytestmark = pytest.mark.slow

SECRET = "am-real-sender-token"
BINARIES = ("prometheus-alertmanager", "alertmanager")


def alertmanager_binary() -> str:
    """The Alertmanager to run; the test is skipped without one, except in CI, where that is a failure."""
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    reason = "Alertmanager is not installed (apt-get install prometheus-alertmanager; .ci/run installs it)"
    if os.environ.get("CASELINK_REQUIRE_POSTGRES"):
        pytest.fail(reason + "; CI requires it")
    pytest.skip(reason)


def start_alertmanager(
    stack, binary: str, caselink_url: str, tmp_path: Path, *, group_wait: str = "100ms", repeat_interval: str = "100ms"
) -> str:
    """Alertmanager on a free loopback port, re-sending every alert to caselink every half second
    (at most every `repeat_interval`); its URL."""
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        json.dumps(
            {
                "route": {
                    "receiver": "caselink",
                    "group_by": ["alertname"],
                    "group_wait": group_wait,
                    "group_interval": "500ms",
                    "repeat_interval": repeat_interval,
                },
                "receivers": [
                    {
                        "name": "caselink",
                        "webhook_configs": [
                            {
                                "url": f"{caselink_url}/webhooks/alertmanager",
                                "send_resolved": True,
                                "http_config": {"authorization": {"type": "Bearer", "credentials": SECRET}},
                            }
                        ],
                    }
                ],
            }
        )
    )
    port = free_port()
    command = [
        binary,
        f"--config.file={config}",
        f"--storage.path={tmp_path / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no HA gossip: one instance, no port beyond its own
        "--log.level=debug",
    ]
    process = Process("alertmanager", command, base_env(), tmp_path)
    stack.processes.insert(0, process)  # stopped first, and its log shown, with the rest of the stack
    process.start()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if not process.running:
            raise AssertionError(f"alertmanager exited:\n{process.logs()}")
        try:
            return requests.get(url + "/-/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_for(ready, timeout=15, interval=0.05, message="alertmanager to be ready")
    return url


def alert(instance: str, summary: str, starts: datetime) -> dict:
    return {
        "labels": {"alertname": "DiskFull", "instance": instance, "severity": "critical"},
        "annotations": {"summary": summary},
        "startsAt": starts.isoformat().replace("+00:00", "Z"),
        "endsAt": (starts + timedelta(minutes=10)).isoformat().replace("+00:00", "Z"),
        "generatorURL": "http://prometheus.example/graph",
    }


def count(web, name: str, **labels: str) -> float:
    """A counter of caselink's /metrics, 0 while it has not been counted."""
    selector = ",".join(f'{label}="{value}"' for label, value in sorted(labels.items()))
    text = web.http.get(web.url + "/metrics", timeout=10).text
    match = re.search(rf"^{name}\{{{re.escape(selector)}\}} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_alertmanager_repeats_are_duplicates_and_a_repeat_with_changed_annotations_is_a_new_event(stack, tmp_path):
    binary = alertmanager_binary()
    web = stack.service(ALERTMANAGER_WEBHOOK_SECRET=SECRET)
    sender = start_alertmanager(stack, binary, web.url, tmp_path)
    starts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)

    def stored() -> list[dict]:
        return web.api("/api/events?source=alertmanager").json()["events"]

    def repeats_answered() -> float:
        return count(web, "caselink_webhooks_total", source="alertmanager", status="200")

    posted = requests.post(
        f"{sender}/api/v2/alerts",
        json=[alert("db-3", "Disk full on db-3", starts), alert("db-4", "Disk full on db-4", starts)],
        timeout=5,
    )
    assert posted.status_code == 200, posted.text

    wait_for(lambda: len(stored()) == 2, timeout=10, message="the group's two alerts stored")
    assert sorted(event["title"] for event in stored()) == ["Disk full on db-3", "Disk full on db-4"]
    # Plain repeats at repeat_interval: answered 200 as duplicates, nothing more stored.
    wait_for(lambda: repeats_answered() >= 2, timeout=10, message="two plain repeats")
    assert len(stored()) == 2

    changed = requests.post(
        f"{sender}/api/v2/alerts", json=[alert("db-3", "Disk full on db-3, now at 100%", starts)], timeout=5
    )
    assert changed.status_code == 200, changed.text

    wait_for(lambda: len(stored()) == 3, timeout=10, message="the changed alert stored as a new event")
    [newest, *_] = stored()
    record = web.api(f"/api/events/{newest['id']}").json()
    assert record["title"] == "Disk full on db-3, now at 100%"
    assert record["kind"] == "alert.firing"
    assert record["dedup_conflict"] is True
    assert len(record["same_key_events"]) == 1
    # And the changed notification's own repeats are duplicates again.
    answered = repeats_answered()
    wait_for(lambda: repeats_answered() >= answered + 2, timeout=10, message="two more plain repeats")
    assert len(stored()) == 3
    assert count(web, "caselink_dedup_conflicts_total", source="alertmanager") == 1


def test_a_group_that_costs_more_to_evaluate_than_a_request_may_is_answered_at_once_and_linked_beside_delivery(
    stack, tmp_path
):
    # 4,000 rules against one notification of 800 alerts: ~3 s of evaluation before the answer
    # (59 s for 9,999 rules and 2,000 alerts, while Alertmanager waited and then sent it again).
    binary = alertmanager_binary()
    alerts = 800
    rules = tmp_path / "rules.yaml"
    rules.write_text(costly_rules_text(4000, child="OPS-42"), encoding="utf-8")
    for index in range(alerts):
        stack.fake.add_case(f"AM-{index}")
    web = stack.service(ALERTMANAGER_WEBHOOK_SECRET=SECRET, RULES_FILE=str(rules))
    sender = start_alertmanager(stack, binary, web.url, tmp_path, group_wait="2s", repeat_interval="1h")
    # Started now: Alertmanager sends a group at once, before group_wait, when an alert of it is older.
    starts = datetime.now(UTC).replace(microsecond=0)

    posted = requests.post(
        f"{sender}/api/v2/alerts",
        json=[alert(f"db-{index}", f"Disk full <{index}>", starts) for index in range(alerts)],
        timeout=10,
    )
    assert posted.status_code == 200, posted.text

    wait_for(
        lambda: count(web, "caselink_webhooks_total", source="alertmanager", status="202") == 1,
        timeout=20,
        message="the group answered",
    )
    # One notification held the whole group (group_wait), and some of its events were deferred.
    assert count(web, "caselink_events_total", source="alertmanager", outcome="new") == alerts
    deferred = count(web, "caselink_events_deferred_total", source="alertmanager")
    assert 0 < deferred < alerts
    # Every alert's link reaches Datadog: those evaluated in the request first, the rest once
    # housekeeping has evaluated them.
    wait_for(lambda: len(stack.fake.creations()) >= alerts, timeout=120, message="every alert's link created")
    assert len(stack.fake.link_counts()) == alerts
    assert set(stack.fake.link_counts().values()) == {1}
    # Answered once: Alertmanager did not time out and send the group again.
    assert count(web, "caselink_webhooks_total", source="alertmanager", status="202") == 1
    assert count(web, "caselink_webhooks_total", source="alertmanager", status="200") == 0
