"""The status page against hostile or odd input: redirects, dry-run retries, ids past the
database's range, huge sender texts, copied session cookies, the store it names."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from app import create_app
from caselink import migrations
from caselink.events import EntityRef
from caselink.events import Event
from caselink.rules import Evaluation
from caselink.rules import PlannedLink
from caselink.rules import RuleOutcome
from tests.test_pages import csrf_token
from tests.test_pages import dead_letter
from tests.test_pages import incident
from tests.test_pages import send
from tests.test_pages import sign_in

HUGE = "9" * 23


@pytest.fixture
def signed_in(client):
    assert sign_in(client).status_code == 302
    return client


def _browser_reads_as_local(location: str) -> bool:
    """What a browser does with a Location: drop tab/LF/CR, trim C0 and space, then a path on
    this site starts with one "/" that no "/" or "\\" follows (WHATWG URL parsing)."""
    seen = location.translate(str.maketrans("", "", "\t\n\r")).strip("".join(map(chr, range(0x21))))
    return seen.startswith("/") and seen[1:2] not in ("/", "\\") and not urlsplit(seen.replace("\\", "/")).netloc


TRICKS = st.sampled_from(["/", "\\", "\t", "\n", "\r", " ", "\x00", "\x1f", "//", "/\t/", "evil.example", ":", "%09"])


@pytest.mark.parametrize(
    "target", ["/\t/evil.example", "/\n/evil.example", "\t//evil.example", " //evil.example", "/\r\\evil.example"]
)
def test_sign_in_never_redirects_to_a_url_a_browser_reads_as_another_site(client, target):
    answer = sign_in(client, next_page=target)

    assert answer.status_code == 302
    assert _browser_reads_as_local(answer.headers["Location"]), answer.headers["Location"]


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.lists(TRICKS | st.text(max_size=4), max_size=6).map("".join))
def test_every_sign_in_redirect_is_a_path_on_this_site(client, target):
    answer = sign_in(client, next_page=target)

    assert answer.status_code == 302
    assert _browser_reads_as_local(answer.headers["Location"]), (target, answer.headers["Location"])


def dry_run_link(store) -> int:
    link = PlannedLink(
        EntityRef("INCIDENT", "00000000-0000-4000-8000-000000000009"), "CAUSES", EntityRef("CASE", "X-1")
    )
    event = Event(source="datadog", kind="incident.created", dedup_key="dry", title="dry")
    store.record([(event, Evaluation([RuleOutcome("r", "matched", links=[link])]))], ruleset="x", dry_run=True)
    [row] = store.list_links(state="dry_run")
    return row["id"]


def test_retry_of_a_dry_run_link_in_dry_run_is_refused_on_the_page_as_in_the_api(signed_in, store):
    link_id = dry_run_link(store)
    page = signed_in.get("/links")

    answer = signed_in.post(f"/links/{link_id}/retry", data={"csrf_token": csrf_token(page.text), "next": "/links"})

    assert answer.status_code == 302
    assert store.get_link(link_id)["state"] == "dry_run"
    assert "cannot be sent until DD_API_KEY" in signed_in.get("/links").text


def test_retry_all_dead_in_dry_run_is_refused_and_changes_nothing(signed_in, store):
    link_id = dead_letter(store)
    page = signed_in.get("/links")

    signed_in.post("/links/retry-dead", data={"csrf_token": csrf_token(page.text), "next": "/links"})

    assert store.get_link(link_id)["state"] == "dead"
    assert "dead links cannot be sent until DD_API_KEY" in signed_in.get("/links").text


def test_the_retry_all_form_comes_back_to_the_page_it_was_on(signed_in, store):
    dead_letter(store)
    page = signed_in.get("/links?state=dead")

    assert page.text.count('name="next" value="/links?state=dead"') == 2


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_store_client(request, settings, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'any.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    app = create_app(replace(settings, database_url=url))
    store = app.extensions["caselink"].store
    migrations.upgrade(store.engine)
    client = app.test_client()
    assert sign_in(client).status_code == 302
    yield client
    store.dispose()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("get", f"/events?before={HUGE}", 200),
        ("get", f"/events?before={HUGE}&q=x", 200),
        ("get", f"/events/{HUGE}", 404),
        ("get", f"/events/{2**63}", 404),
        ("get", f"/links?after={HUGE}", 400),
        ("get", f"/links?state=dead&after=1.0_{HUGE}", 400),
        ("get", "/links?state=dead&after=nan_1", 400),
        ("post", f"/links/{HUGE}/retry", 404),
    ],
)
def test_an_id_too_large_for_the_database_is_an_answer_not_a_500(any_store_client, method, path, status):
    client = any_store_client
    data = {"csrf_token": csrf_token(client.get("/links").text)} if method == "post" else None

    answer = getattr(client, method)(path, data=data)

    assert answer.status_code == status, answer.text


def test_the_events_list_shortens_a_huge_title(signed_in):
    send(signed_in, incident(1, "OPS-1 " + "x" * 2_000_000))

    listing = signed_in.get("/events")

    assert listing.status_code == 200
    assert len(listing.text) < 50_000
    assert "OPS-1 xxx" in listing.text
    assert "x" * 2_000_000 in signed_in.get("/events/1").text


def test_a_copied_session_cookie_stops_working_once_signed_out(client, app):
    assert sign_in(client).status_code == 302
    copy = app.test_client()
    cookie = client.get_cookie("caselink_session")
    copy.set_cookie("caselink_session", cookie.value)
    assert copy.get("/").status_code == 200

    client.post("/logout", data={"csrf_token": csrf_token(client.get("/").text)})

    assert copy.get("/").status_code == 302
    assert sign_in(client).status_code == 302
    assert client.get("/").status_code == 200


def test_the_overview_names_the_store_as_the_cli_does(signed_in, store, database_url):
    page = signed_in.get("/")

    assert f"Store: {store.describe()}" in page.text
    assert database_url.startswith("sqlite:////")
    assert f"Store: {database_url}" in page.text
