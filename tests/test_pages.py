"""The status page through Flask's test client: access, sign-in, CSRF, escaping, what each page shows."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from datetime import UTC
from datetime import datetime
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import pytest

from app import create_app
from caselink import migrations
from caselink import pages
from caselink.config import Secret
from caselink.events import EntityRef
from caselink.events import Event
from caselink.rules import Evaluation
from caselink.rules import PlannedLink
from caselink.rules import RuleOutcome
from caselink.store import RuleStats
from tests.servers import ADMIN_TOKEN
from tests.servers import WEBHOOK_SECRET

HOOK = {"Authorization": f"Bearer {WEBHOOK_SECRET}"}
PAGES = ["/", "/events", "/events/1", "/links", "/links?state=dead", "/rules"]


def incident(number: int, title: str, severity: str = "SEV-1") -> bytes:
    return json.dumps(
        {
            "event": "incident.created",
            "id": f"page-{number}",
            "incident": {"id": f"00000000-0000-4000-8000-{number:012d}", "title": title, "severity": severity},
        }
    ).encode()


def send(client, body: bytes) -> dict:
    answer = client.post("/webhooks/datadog", data=body, headers=HOOK, content_type="application/json")
    assert answer.status_code == 202, answer.json
    return answer.json


def csrf_token(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in(client, token: str = ADMIN_TOKEN, next_page: str = "/"):
    form = client.get("/login")
    return client.post("/login", data={"csrf_token": csrf_token(form.text), "token": token, "next": next_page})


@pytest.fixture
def signed_in(client):
    assert sign_in(client).status_code == 302
    return client


def dead_letter(store, case: str = "OPS-404") -> int:
    """A link the worker gave up on, as it leaves one."""
    link = PlannedLink(EntityRef("INCIDENT", "00000000-0000-4000-8000-000000000009"), "CAUSES", EntityRef("CASE", case))
    event = Event(source="datadog", kind="incident.created", dedup_key=case, title=f"see {case}")
    store.record([(event, Evaluation([RuleOutcome("r", "matched", links=[link])]))], ruleset="x", dry_run=False)
    [job] = store.claim("test-worker", 1, lease=30)
    store.dead(job, f"case {case} does not exist", status=404)
    return job.id


def test_the_pages_are_closed_without_an_admin_token(settings):
    app = create_app(replace(settings, admin_token=None))
    client = app.test_client()
    try:
        for path in PAGES:
            answer = client.get(path)
            assert answer.status_code == 403, path
            assert "Set <code>ADMIN_TOKEN</code>" in answer.text
        assert client.post("/links/retry-dead").status_code == 403
        assert client.post("/login", data={"token": ""}).status_code == 403
    finally:
        app.extensions["caselink"].store.dispose()


@pytest.mark.parametrize("path", PAGES)
def test_every_page_sends_a_stranger_to_sign_in_and_back(client, path):
    answer = client.get(path)

    assert answer.status_code == 302
    location = urlsplit(answer.headers["Location"])
    assert location.path == "/login"
    assert parse_qs(location.query) == {"next": [path]}


def test_a_wrong_token_is_refused_and_the_right_one_signs_in(client):
    refused = sign_in(client, token="not-" + ADMIN_TOKEN)
    assert refused.status_code == 401
    assert "That is not the admin token." in refused.text
    assert client.get("/").status_code == 302

    accepted = sign_in(client, next_page="/rules")

    assert accepted.status_code == 302
    assert accepted.headers["Location"] == "/rules"
    assert client.get("/").status_code == 200


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:x"])
def test_sign_in_never_sends_the_browser_to_another_site(client, target):
    answer = sign_in(client, next_page=target)

    assert answer.status_code == 302
    assert answer.headers["Location"] == "/"


@pytest.mark.parametrize("path", ["/login", "/", "/events/1"])
def test_pages_cannot_be_framed_or_cached(signed_in, path):
    send(signed_in, incident(1, "see OPS-42"))

    headers = signed_in.get(path).headers

    assert headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["Cache-Control"] == "no-store"


def test_signing_out_ends_the_session(signed_in):
    page = signed_in.get("/")

    signed_in.post("/logout", data={"csrf_token": csrf_token(page.text)})

    assert signed_in.get("/").status_code == 302


def test_a_new_admin_token_signs_everyone_out_even_with_the_same_secret_key(settings):
    settings = replace(settings, secret_key=Secret("a-fixed-secret-key"))
    app = create_app(settings)
    client = app.test_client()
    service = app.extensions["caselink"]
    try:
        migrations.upgrade(service.store.engine)
        sign_in(client)
        assert client.get("/").status_code == 200

        service.settings = replace(settings, admin_token=Secret("the-new-admin-token"))

        assert client.get("/").status_code == 302
    finally:
        service.store.dispose()


def test_the_session_key_is_derived_from_the_token_unless_secret_key_is_set(settings):
    derived = pages.session_key(settings)

    assert derived
    assert ADMIN_TOKEN not in derived
    assert pages.session_key(replace(settings, admin_token=Secret("other"))) != derived
    assert pages.session_key(replace(settings, secret_key=Secret("configured"))) == "configured"
    assert pages.session_key(replace(settings, admin_token=None)) is None


def test_a_post_without_its_csrf_token_is_refused_and_changes_nothing(signed_in, store):
    link_id = dead_letter(store)

    one = signed_in.post(f"/links/{link_id}/retry")
    every = signed_in.post("/links/retry-dead", data={"csrf_token": "forged"})

    assert (one.status_code, every.status_code) == (400, 400)
    assert "The form could not be checked" in one.text
    assert store.get_link(link_id)["state"] == "dead"


def test_retry_moves_a_dead_letter_back_to_pending(signed_in, store):
    link_id = dead_letter(store)
    page = signed_in.get("/links?state=dead")
    assert f'action="/links/{link_id}/retry"' in page.text

    answer = signed_in.post(
        f"/links/{link_id}/retry", data={"csrf_token": csrf_token(page.text), "next": "/links?state=dead"}
    )

    assert answer.status_code == 302
    assert answer.headers["Location"] == "/links?state=dead"
    link = store.get_link(link_id)
    assert (link["state"], link["attempts"]) == ("pending", 0)
    assert f"Link #{link_id}" in signed_in.get("/links?state=dead").text


def test_retry_all_dead_sends_every_dead_letter_again(settings):
    live = create_app(replace(settings, dd_api_key=Secret("api-key"), dd_app_key=Secret("app-key")))
    store = live.extensions["caselink"].store
    migrations.upgrade(store.engine)
    client = live.test_client()
    try:
        sign_in(client)
        first, second = dead_letter(store, "OPS-1"), dead_letter(store, "OPS-2")
        page = client.get("/links")
        assert "Retry all 2 dead" in page.text

        client.post("/links/retry-dead", data={"csrf_token": csrf_token(page.text)})

        assert {store.get_link(first)["state"], store.get_link(second)["state"]} == {"pending"}
        assert "2 dead link(s) are pending again." in client.get("/links").text
    finally:
        store.dispose()


def test_retrying_a_link_that_is_not_dead_is_a_page_that_says_so(signed_in, store):
    link_id = dead_letter(store)
    page = signed_in.get("/links")
    store.retry(link_id)

    answer = signed_in.post(f"/links/{link_id}/retry", data={"csrf_token": csrf_token(page.text)})

    assert answer.status_code == 302
    assert f"link {link_id} is pending; only dead or dry-run links can be retried" in signed_in.get("/links").text


def test_what_senders_wrote_is_escaped_on_every_page(signed_in):
    title = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    send(signed_in, incident(1, title))

    for path in ["/events", "/events/1", "/events?q=script"]:
        html = signed_in.get(path).text
        assert "<script>alert" not in html, path
        assert "<img src=x" not in html, path
        assert "&lt;script&gt;alert(" in html, path


def test_no_page_shows_a_secret(settings, tmp_path):
    secrets = {
        "api": "dd-api-key-that-must-not-show",
        "app": "dd-app-key-that-must-not-show",
        "hook": WEBHOOK_SECRET,
        "admin": ADMIN_TOKEN,
        "url": "proxy-password-that-must-not-show",
    }
    live = replace(
        settings,
        dd_api_key=Secret(secrets["api"]),
        dd_app_key=Secret(secrets["app"]),
        dd_api_url=f"https://user:{secrets['url']}@proxy.example",
    )
    app = create_app(live)
    client = app.test_client()
    service = app.extensions["caselink"]
    try:
        migrations.upgrade(service.store.engine)
        send(client, incident(1, "see OPS-42"))
        form = client.get("/login").text
        sign_in(client)
        seen = form + "".join(client.get(path).text for path in PAGES)
        assert "links go to https://proxy.example" in seen
        for name, value in secrets.items():
            assert value not in seen, name
        assert pages.session_key(live) not in seen
    finally:
        service.store.dispose()


def test_an_events_page_explains_every_rule_with_the_first_failing_condition(signed_in):
    send(signed_in, incident(1, "Disk 80% on db-3, see OPS-42", severity="SEV-4"))

    html = signed_in.get("/events/1").text

    outcomes = re.findall(r'<tr class="outcome-(\w+)">\s*<td><code>([^<]+)</code>', html)
    assert outcomes == [
        ("not_matched", "incident-causes-mentioned-case"),
        ("not_applicable", "page-escalates-to-mentioned-case"),
        ("not_applicable", "case-relates-to-mentioned-case"),
    ]
    assert "when[0]: severity in [&#39;SEV-1&#39;, &#39;SEV-2&#39;]: severity is &#34;SEV-4&#34;" in html
    assert "&#34;title&#34;: &#34;Disk 80% on db-3, see OPS-42&#34;" in html


def test_an_events_page_shows_each_planned_link_where_it_is_now(signed_in, store):
    send(signed_in, incident(1, "Checkout down, see OPS-42"))

    html = signed_in.get("/events/1").text

    [link] = store.list_links()
    assert "plans <code>INCIDENT:00000000-0000-4000-8000-000000000001</code> CAUSES <code>CASE:OPS-42</code>" in html
    assert f'<a href="/links?state=dry_run#link-{link["id"]}">link #{link["id"]}</a>' in html


def test_an_event_that_does_not_exist_is_a_404_page(signed_in):
    answer = signed_in.get("/events/999")

    assert answer.status_code == 404
    assert "no event 999" in answer.text
    assert answer.mimetype == "text/html"


@pytest.mark.parametrize(
    ("query", "titles"),
    [
        ("", ["[TEST] OPS-44", "db slow OPS-43", "Checkout down, see OPS-42"]),
        ("?outcome=linked", ["db slow OPS-43", "Checkout down, see OPS-42"]),
        ("?outcome=not-linked", ["[TEST] OPS-44"]),
        ("?outcome=unrecognised", []),
        ("?outcome=duplicate-conflict", []),
        ("?q=checkout", ["Checkout down, see OPS-42"]),
        ("?kind=incident.updated", []),
        ("?source=pagerduty", []),
        ("?source=datadog&q=OPS-4", ["[TEST] OPS-44", "db slow OPS-43", "Checkout down, see OPS-42"]),
    ],
)
def test_the_events_page_filters_by_source_kind_outcome_and_text(signed_in, query, titles):
    for number, title in enumerate(["Checkout down, see OPS-42", "db slow OPS-43", "[TEST] OPS-44"], start=1):
        send(signed_in, incident(number, title))

    html = signed_in.get("/events" + query).text

    assert re.findall(r'<td class="title">([^<]*?)</td>', html) == titles


def test_the_events_page_marks_an_event_waiting_for_its_evaluation_and_filters_by_it(signed_in, store):
    from caselink.events import Event
    from caselink.rules import Evaluation

    send(signed_in, incident(1, "Checkout down, see OPS-42"))
    late = Event("datadog", "incident.created", "late", title="Disk full, see OPS-43", payload={"id": "late"})
    store.record([(late, Evaluation.deferral("later"))], ruleset="", dry_run=True)

    html = signed_in.get("/events?outcome=deferred").text

    assert re.findall(r'<td class="title">([^<]*?)</td>', html) == ["Disk full, see OPS-43"]
    assert 'title="waiting for its evaluation">deferred</span>' in html
    assert '<option value="deferred"' in signed_in.get("/events").text
    page = signed_in.get("/events/2")
    assert page.status_code == 200
    assert "not evaluated yet" in page.text


def test_the_events_page_pages_by_cursor(signed_in, monkeypatch):
    monkeypatch.setattr(pages, "PAGE_SIZE", 2)
    for number in range(1, 6):
        send(signed_in, incident(number, f"incident {number} OPS-{number}"))

    first = signed_in.get("/events").text
    older = re.search(r'rel="next" href="([^"]+)"', first).group(1).replace("&amp;", "&")
    second = signed_in.get(older).text

    assert re.findall(r'<td class="title">incident (\d)', first) == ["5", "4"]
    assert older == "/events?before=4"
    assert re.findall(r'<td class="title">incident (\d)', second) == ["3", "2"]


def test_an_events_page_says_when_its_key_repeated_an_earlier_events_with_other_content(signed_in):
    send(signed_in, incident(1, "Checkout down, see OPS-42"))
    send(signed_in, incident(1, "Checkout down and out, see OPS-42"))

    listed = signed_in.get("/events?outcome=duplicate-conflict").text
    html = signed_in.get("/events/2").text

    assert re.findall(r'<td class="title">([^<]*?)</td>', listed) == ["Checkout down and out, see OPS-42"]
    assert "repeated #1 with different content: stored and evaluated as a new event" in html
    assert '<a href="/events/1">#1</a>' in html


@pytest.mark.parametrize("query", ["?before=abc", "?before=0", "?outcome=duplicate", "?before=-3"])
def test_a_bad_events_query_is_a_400_page(signed_in, query):
    answer = signed_in.get("/events" + query)

    assert answer.status_code == 400
    assert answer.mimetype == "text/html"


def test_a_bad_links_cursor_or_state_is_a_400_page(signed_in):
    assert signed_in.get("/links?state=lost").status_code == 400
    assert signed_in.get("/links?state=dead&after=nonsense").status_code == 400
    assert signed_in.get("/links?after=x").status_code == 400


def test_the_rules_page_shows_each_rule_with_its_examples_and_the_stores_statistics(signed_in, store):
    send(signed_in, incident(1, "Checkout down, see OPS-42"))
    send(signed_in, incident(2, "db slow OPS-43"))
    send(signed_in, incident(3, "[TEST] OPS-44"))
    # What the delivery worker's housekeeping does a few seconds after events arrive.
    assert store.count_rule_stats(settle=0) == 3
    today = time.strftime("%Y-%m-%d", time.gmtime())

    html = signed_in.get("/rules").text

    assert re.findall(r'<section class="rule" id="rule-([^"]+)">', html) == [
        "incident-causes-mentioned-case",
        "page-escalates-to-mentioned-case",
        "case-relates-to-mentioned-case",
    ]
    assert html.count('<span class="badge state-delivered">ok</span>') == 5
    when = "severity in [&#39;SEV-1&#39;, &#39;SEV-2&#39;] and title not_contains &#34;[test]&#34; (ignore_case)"
    assert when in html
    # Per rule: all time, then the last 30 days; dry-run delivers nothing.
    assert re.findall(r"<th>(all time|last 30d)</th>", html) == ["all time", "last 30d"] * 3
    assert re.findall(r'class="stat hits">([^<]*)<', html) == ["2", "2", "0", "0", "0", "0"]
    assert re.findall(r'class="stat links-planned">([^<]*)<', html) == ["2", "2", "0", "0", "0", "0"]
    assert re.findall(r'class="stat links-delivered">([^<]*)<', html) == ["0"] * 6
    last = re.findall(r'class="stat last-matched">([^<]*)<', html)
    assert [value[:10] for value in last[:2]] == [today, today]
    assert last[2:] == ["never"] * 4
    assert re.findall(r'<div class="flag problem">([^<]*)</div>', html) == ["no match in 30d", "no match in 30d"]


def test_the_rules_page_shows_a_failing_example_with_what_differs(settings, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        (settings.rules_file.read_text()).replace('child: "CASE:OPS-42"}', 'child: "CASE:OPS-99"}', 1),
        encoding="utf-8",
    )
    app = create_app(replace(settings, rules_file=rules))
    migrations.upgrade(app.extensions["caselink"].store.engine)
    client = app.test_client()
    try:
        sign_in(client)
        html = client.get("/rules").text
    finally:
        app.extensions["caselink"].store.dispose()

    assert html.count('<span class="badge state-dead">fails</span>') == 1
    flags = re.findall(r'<div class="flag problem">([^<]*)</div>', html)
    assert flags == ["no match in 30d", "1 example(s) fail", "no match in 30d", "no match in 30d"]
    assert "expected <code>INCIDENT:2f0c6a4e-8d1b-4c3a-9e5f-7a6b5c4d3e2f CAUSES CASE:OPS-99</code>" in html
    assert "planned <code>INCIDENT:2f0c6a4e-8d1b-4c3a-9e5f-7a6b5c4d3e2f CAUSES CASE:OPS-42</code>" in html


def test_rule_statistics_show_the_stores_figures_and_never_for_a_rule_that_did_not_match():
    busy = RuleStats("busy", 12, 3, 2, datetime(2025, 11, 26, 10, 0, tzinfo=UTC))

    assert pages.rule_statistics(busy) == {
        "hits": "12",
        "links_planned": "3",
        "links_delivered": "2",
        "last_matched": "2025-11-26 10:00:00 UTC",
    }
    assert pages.rule_statistics(RuleStats("idle", 0, 0, 0, None))["last_matched"] == "never"


def test_the_overview_shows_the_rules_file_errors_with_file_and_line_while_the_old_rules_stay(settings, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(settings.rules_file.read_text(), encoding="utf-8")
    app = create_app(replace(settings, rules_file=rules))
    client = app.test_client()
    service = app.extensions["caselink"]
    try:
        migrations.upgrade(service.store.engine)
        sign_in(client)
        rules.write_text(rules.read_text().replace("    when:\n", "    whn:\n", 1), encoding="utf-8")
        service.rules.check_every = 0

        html = client.get("/").text
    finally:
        service.store.dispose()

    assert "The file on disk has errors and was not loaded; the rules above stay in force" in html
    assert re.search(r"rules\.yaml:\d+: rule &#39;incident-causes-mentioned-case&#39;: unknown key &#39;whn&#39;", html)
    assert "3 (3 enabled)" in html


def test_the_overview_shows_links_by_state_and_the_last_delivery_errors(signed_in, store):
    link_id = dead_letter(store)

    html = signed_in.get("/").text

    assert '<td class="num state-dead alarm">1</td>' in html
    assert f'<a href="/links?state=dead#link-{link_id}">#{link_id}</a>' in html
    assert "HTTP 404: case OPS-404 does not exist" in html
    assert "dry-run" in html


def test_the_overview_shows_the_rate_limit_budget_in_use(signed_in, store):
    store.learn_rate_limit("POST /api/v2/cases/link", "cases_link_create", 100, 86400.0)
    for _ in range(7):
        store.take_rate_slot("cases_link_create", int(time.time() // 86400), 100)

    html = signed_in.get("/").text

    assert "<code>cases_link_create</code>" in html
    assert "7 of 100" in html
    assert "<code>POST /api/v2/cases/link</code>" in html
