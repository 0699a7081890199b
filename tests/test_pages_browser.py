"""The status page in a real browser: gunicorn on loopback, headless Debian Chromium through chromedriver.

Each test writes a screenshot of the pages it visits under its temporary
folder (`<tmp_path>/screenshots/`). Without chromium and chromedriver these
tests are skipped on a developer machine and fail in CI (CI=true or
CASELINK_REQUIRE_POSTGRES=1), where .ci/run installs them.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from caselink.store import Store
from tests.servers import ADMIN_TOKEN
from tests.servers import wait_for

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FAST = {"DELIVERY_BACKOFF_BASE": "0.05", "DELIVERY_BACKOFF_MAX": "0.2", "WORKER_POLL_INTERVAL": "0.05"}


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        message = "no chromium or chromedriver: apt-get install chromium chromium-driver to run the browser tests"
        if os.environ.get("CI") == "true" or os.environ.get("CASELINK_REQUIRE_POSTGRES"):
            pytest.fail(message + "; CI requires them")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,1000")
    # The driver is Debian's: Selenium Manager would try to download one, which cannot work here.
    driver = webdriver.Chrome(options=options, service=ChromeService(CHROMEDRIVER))
    driver.set_page_load_timeout(20)
    built = Browser(driver, tmp_path / "screenshots")
    yield built
    driver.quit()


class Browser:
    """A Chromium session that can sign in and keeps a screenshot of every page it is asked to."""

    def __init__(self, driver, screenshots: Path) -> None:
        from selenium.webdriver.common.by import By

        self.driver = driver
        self.by = By
        self.screenshots = screenshots
        screenshots.mkdir(parents=True, exist_ok=True)

    def open(self, url: str) -> None:
        self.driver.get(url)

    def submit(self, element) -> None:
        """Click a button or link and wait for the page it leads to."""
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.wait import WebDriverWait

        old = self.find("html")
        element.click()

        def left(driver) -> bool:
            try:
                return bool(expected_conditions.staleness_of(old)(driver))
            except WebDriverException:
                # Chromium may say the old node "does not belong to the document" rather than
                # that it is stale: either way the page it was on is gone.
                return True

        WebDriverWait(self.driver, 10).until(left)

    def find(self, css: str):
        return self.driver.find_element(self.by.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list:
        return self.driver.find_elements(self.by.CSS_SELECTOR, css)

    def text(self) -> str:
        return self.find("body").text

    def sign_in(self, base_url: str, token: str = ADMIN_TOKEN) -> None:
        self.open(base_url + "/")
        self.find("input[name=token]").send_keys(token)
        self.submit(self.find("form.signin button"))

    def screenshot(self, name: str) -> Path:
        """The whole page, not only the window (Chromium's DevTools can capture beyond the viewport)."""
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path = self.screenshots / f"{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


def incident(number: int, title: str, severity: str = "SEV-1") -> bytes:
    return json.dumps(
        {
            "event": "incident.created",
            "id": f"browser-{number}",
            "incident": {"id": f"00000000-0000-4000-8000-{number:012d}", "title": title, "severity": severity},
            "tags": "service:payments-api,team:checkout",
        }
    ).encode()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request, stack) -> str:
    """The stack's store: its SQLite file, or a fresh PostgreSQL database."""
    if request.param == "postgresql":
        stack.database_url = request.getfixturevalue("postgres_url")
    return stack.database_url


def links_by_state(stack, state: str) -> list[dict]:
    store = Store(stack.database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        return store.list_links(state=state)
    finally:
        store.dispose()


def count_rule_stats(stack) -> None:
    """What the delivery worker's housekeeping does a few seconds after events arrive, now."""
    store = Store(stack.database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        store.count_rule_stats(settle=0)
    finally:
        store.dispose()


def test_signing_in_takes_the_admin_token_and_opens_the_overview(stack, browser):
    web = stack.service(**FAST)

    browser.open(web.url + "/links")
    assert browser.driver.current_url.startswith(web.url + "/login")
    browser.screenshot("login")
    browser.find("input[name=token]").send_keys("not-the-token")
    browser.submit(browser.find("form.signin button"))
    assert "That is not the admin token." in browser.text()
    browser.find("input[name=token]").send_keys(ADMIN_TOKEN)
    browser.submit(browser.find("form.signin button"))

    # Back where sign-in interrupted, then the overview.
    assert browser.driver.current_url == web.url + "/links"
    browser.submit(browser.find("header nav a[href='/']"))
    assert browser.find("h1").text == "Overview"
    assert browser.find(".mode-live").text == "live"
    assert ADMIN_TOKEN not in browser.driver.page_source
    browser.screenshot("overview")
    browser.submit(browser.find("header .signout button"))
    browser.open(web.url + "/")
    assert browser.driver.current_url.startswith(web.url + "/login")


def test_an_events_explain_page_says_why_a_rule_did_not_match(stack, browser):
    web = stack.service(**FAST)
    assert web.post("datadog", incident(1, "Disk 80% on db-3, see OPS-42", severity="SEV-4")).status_code == 202
    assert web.post("datadog", incident(2, "Checkout down, see OPS-42")).status_code == 202
    browser.sign_in(web.url)

    browser.open(web.url + "/events")
    rows = browser.find_all("table.events tbody tr")
    assert len(rows) == 2
    browser.screenshot("events")
    browser.find("select[name=outcome]").send_keys("not linked")
    browser.submit(browser.find("form.filters button"))
    [row] = browser.find_all("table.events tbody tr")
    assert "Disk 80%" in row.text
    browser.submit(row.find_element(browser.by.CSS_SELECTOR, "td a"))

    explain = browser.find("table.explain")
    [not_matched] = explain.find_elements(browser.by.CSS_SELECTOR, "tr.outcome-not_matched")
    assert "incident-causes-mentioned-case" in not_matched.text
    assert "not matched" in not_matched.text
    assert "severity" in not_matched.text
    assert '"SEV-4"' in not_matched.text
    assert "not applicable" in explain.text
    assert '"title": "Disk 80% on db-3, see OPS-42"' in browser.find("details.payload pre").text
    browser.screenshot("event")


def test_the_retry_button_sends_a_dead_letter_again_and_the_worker_delivers_it(
    stack, fake_datadog, database_url, browser
):
    fake_datadog.configure(limits={"create": {"limit": 100, "period": 10, "name": "cases_link_create"}})
    web = stack.service(DATABASE_URL=database_url, **FAST)
    # OPS-404 and OPS-405 do not exist in Datadog yet: resolving them is a 404, a dead letter.
    assert web.post("datadog", incident(3, "Payments down, see OPS-404")).status_code == 202
    assert web.post("datadog", incident(4, "Refunds down, see OPS-405")).status_code == 202
    assert web.post("datadog", incident(5, "Checkout down, see OPS-42")).status_code == 202
    wait_for(lambda: len(links_by_state(stack, "dead")) == 2, timeout=20, message="two dead letters")
    browser.sign_in(web.url)
    browser.open(web.url + "/")
    assert "case OPS-404 does not exist" in browser.find("body").text
    browser.screenshot("overview-with-dead-letters")
    fake_datadog.add_case("OPS-404")
    fake_datadog.add_case("OPS-405")

    browser.open(web.url + "/links?state=dead")
    browser.screenshot("links-dead")
    [first, second] = browser.find_all("table.links tbody tr")
    dead_id = int(first.get_attribute("id").removeprefix("link-"))
    browser.submit(first.find_element(browser.by.CSS_SELECTOR, "button.retry"))

    assert f"Link #{dead_id}" in browser.find(".flash").text
    assert "pending again" in browser.find(".flash").text
    assert dead_id not in {link["id"] for link in links_by_state(stack, "dead")}
    wait_for(
        lambda: dead_id in {link["id"] for link in links_by_state(stack, "delivered")},
        timeout=20,
        message="the retried link delivered",
    )
    browser.submit(browser.find("form.inline button"))  # "Retry all 1 dead"
    assert "1 dead link(s) are pending again." in browser.find(".flash").text
    wait_for(lambda: len(links_by_state(stack, "delivered")) == 3, timeout=20, message="every link delivered")

    browser.open(web.url + "/links?state=delivered")
    assert len(browser.find_all("table.links tbody tr")) == 3
    browser.screenshot("links")
    counts = fake_datadog.link_counts()
    assert sorted(counts.values()) == [1, 1, 1]


def test_every_page_is_screenshotted_and_the_rules_page_runs_the_examples(stack, browser):
    web = stack.service(**FAST)
    assert web.post("datadog", incident(6, "Checkout down, see OPS-42")).status_code == 202
    assert web.post("datadog", incident(7, "Disk 80% on db-3, see OPS-42", severity="SEV-4")).status_code == 202
    wait_for(lambda: len(links_by_state(stack, "delivered")) == 1, timeout=20, message="the link delivered")
    count_rule_stats(stack)
    browser.sign_in(web.url)

    browser.open(web.url + "/rules")
    sections = browser.find_all("section.rule")
    assert [section.get_attribute("id") for section in sections] == [
        "rule-incident-causes-mentioned-case",
        "rule-page-escalates-to-mentioned-case",
        "rule-case-relates-to-mentioned-case",
    ]
    assert len(browser.find_all(".example .state-delivered")) == 5
    assert not browser.find_all(".example .state-dead")
    # Counted from the two events stored above: all time, then the last 30 days, per rule.
    assert [cell.text for cell in browser.find_all("td.hits")] == ["1", "1", "0", "0", "0", "0"]
    assert [cell.text for cell in browser.find_all("td.links-planned")] == ["1", "1", "0", "0", "0", "0"]
    assert [cell.text for cell in browser.find_all("td.links-delivered")] == ["1", "1", "0", "0", "0", "0"]
    last = [cell.text for cell in browser.find_all("td.last-matched")]
    assert last[0].startswith(time.strftime("%Y-%m-%d", time.gmtime()))
    assert last[0] == last[1]
    assert last[2:] == ["never"] * 4
    assert [flag.text for flag in browser.find_all(".flag")] == ["no match in 30d"] * 2
    browser.screenshot("rules")

    shots = {}
    for name, path in [("overview", "/"), ("events", "/events"), ("event", "/events/1"), ("links", "/links")]:
        browser.open(web.url + path)
        assert browser.find("h1").text, name
        shots[name] = browser.screenshot(name)
    assert all(path.stat().st_size > 10_000 for path in shots.values())
