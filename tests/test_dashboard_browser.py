"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium, on a real
daemon against the stand-in. With TETHER_SCREENSHOTS=<folder> the tests save a screenshot of
each page there (docs/images/ holds the ones the README shows)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from conftest import Tether, create, server_record, wait_for
from dashboard_support import TOKEN, serve_dashboard
from tether.render import usd

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCREENSHOTS = os.environ.get("TETHER_SCREENSHOTS")

POLICIES = """
[[policy]]
name = "runaway"
match = { metadata = { case = "runaway" } }
max_runtime = "5s"

[[policy]]
name = "waiting"
match = { metadata = { case = "waiting" } }
max_queued = "1h"
reserve_usd = 0.25

[[policy]]
name = "batch"
max_runtime = "2h"
reserve_usd = 0.5

[[budget]]
name = "team"
limit_usd = 5.0
period = "day"
"""


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: install Debian's chromium and chromium-driver (.ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def shoot(driver: WebDriver, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SCREENSHOTS) / f"dashboard-{name}.png"))


def text_of(driver: WebDriver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def no_policy_violations(driver: WebDriver) -> None:
    """Nothing the Content-Security-Policy blocked (an inline script or style would be)."""
    messages = [entry["message"] for entry in driver.get_log("browser")]
    assert not [m for m in messages if "Content Security Policy" in m], messages


def until(driver: WebDriver, condition, timeout: float = 40, what: str = ""):
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d), what)


def test_the_overview_shows_the_counts_and_a_countdown_ticks(tether: Tether, fake, browser: WebDriver):
    running = [create(fake, fake_run="3600") for _ in range(3)]
    queued = [create(fake, fake_queue="3600", case="waiting") for _ in range(2)]
    done = create(fake, fake_run="0", fake_outcome="completed")
    dropped = create(fake, fake_run="3600")
    tether.write_config(POLICIES)
    tether.ok("track", *running, *queued, done, dropped, "--label", "team=search")
    base = serve_dashboard(tether, token=False, policies=POLICIES)
    tether.ok("cancel", dropped, "--reason", "not needed")

    def settled() -> bool:
        statuses = [r["status"] for r in tether.records().values()]
        return sorted(statuses) == sorted(["in_progress"] * 3 + ["queued"] * 2 + ["completed", "cancelled"])

    wait_for(settled, timeout=40, what="the stand-in's statuses seen by the daemon")
    browser.get(base + "/")
    assert text_of(browser, "active-total") == "5"
    assert text_of(browser, "active-in_progress") == "3" and text_of(browser, "active-queued") == "2"
    manual = browser.find_elements(By.CSS_SELECTOR, '#cancels td[data-reason="manual"]')
    assert [cell.text for cell in manual] == ["1", "1"]  # the last hour, the last day
    [team] = tether.json("budget")
    budget_text = browser.find_element(By.ID, "budget-team").text
    assert f"{usd(team['spent_usd'])} spent + {usd(team['committed_usd'])} committed of $5.00" in budget_text
    assert team["committed_usd"] == pytest.approx(3 * 0.5 + 2 * 0.25)
    shoot(browser, "overview")
    no_policy_violations(browser)

    browser.get(base + "/responses?status=in_progress")
    rows = browser.find_elements(By.CSS_SELECTOR, "#responses tbody tr")
    assert sorted(r.get_attribute("data-id") for r in rows) == sorted(running)
    countdown = browser.find_element(By.CSS_SELECTOR, "#responses .countdown")
    first = countdown.text
    assert first.startswith("in 1") and first.endswith("s"), first  # about 2h less what has run: "in 119m54s"
    until(browser, lambda d: countdown.text not in ("", first), timeout=10, what="the countdown to tick")
    browser.get(base + "/responses")
    shoot(browser, "responses")
    browser.get(base + "/budgets")
    assert (
        usd(team["committed_usd"])
        in browser.find_element(By.CSS_SELECTOR, '#budget-team [data-figure="committed"]').text
    )
    assert browser.find_elements(By.CSS_SELECTOR, "#budget-team svg polyline.chart-spend")
    shoot(browser, "budgets")
    browser.get(base + "/events?kind=cancel_requested")
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#events .kind")] == ["cancel_requested"]
    no_policy_violations(browser)


def test_a_response_cancelled_by_its_policy_shows_its_events_live(tether: Tether, fake, browser: WebDriver):
    base = serve_dashboard(tether, token=False, policies=POLICIES)
    browser.get(f"{base}/events")  # open before the response is even tracked: all it shows comes live
    browser.execute_script("window.notReloaded = true")
    rid = create(fake, fake_run="600", case="runaway")
    tether.ok("track", rid)

    def kinds(driver: WebDriver) -> list[str]:
        rows = driver.find_elements(By.CSS_SELECTOR, f'#events tr:has(a[href="/responses/{rid}"]) .kind')
        return [row.text for row in rows]

    until(browser, lambda d: "tracked" in kinds(d), what="the tracked event on the open page")
    until(browser, lambda d: "cancel_requested" in kinds(d), what="the policy's cancel on the open page")
    until(browser, lambda d: kinds(d)[0] == "status", what="the cancelled status on the open page")
    assert kinds(browser) == ["status", "cancel_requested", "limit_exceeded", "tracked"]
    assert browser.execute_script("return window.notReloaded") is True
    assert len(server_record(fake, rid)["cancels"]) == 1
    shoot(browser, "events")
    no_policy_violations(browser)

    browser.get(f"{base}/responses/{rid}")
    assert text_of(browser, "status") == "cancelled"
    timeline = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#events .kind")]
    assert timeline == ["status", "cancel_requested", "limit_exceeded", "tracked"]
    shoot(browser, "response")


def test_a_cancel_through_the_page_with_the_token_reaches_the_api(tether: Tether, fake, browser: WebDriver):
    rid = create(fake, fake_run="600")
    tether.ok("track", rid)
    base = serve_dashboard(tether, token=True)
    browser.get(f"{base}/responses/{rid}?token={TOKEN}")
    assert TOKEN not in browser.current_url and TOKEN not in browser.page_source
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: no script reads it
    assert text_of(browser, "mode") == "operator: cancel enabled"
    browser.find_element(By.CSS_SELECTOR, '#cancel input[name="reason"]').send_keys("stuck in a loop")
    browser.find_element(By.CSS_SELECTOR, "#cancel button").click()
    until(browser, lambda d: d.find_elements(By.ID, "confirm"), what="the confirmation page")
    assert text_of(browser, "reason") == "stuck in a loop"
    assert server_record(fake, rid)["cancels"] == []  # asked, not sent
    shoot(browser, "confirm")
    browser.find_element(By.CSS_SELECTOR, "#confirm button").click()
    wait_for(lambda: server_record(fake, rid)["cancels"], timeout=20, what="the cancel at the stand-in")
    until(browser, lambda d: d.current_url == f"{base}/responses/{rid}", what="back on the response")
    until(browser, lambda d: "stuck in a loop" in text_of(d, "events"), what="the cancel in the timeline")
    [requested] = [e for e in tether.json("show", rid)["events"] if e["kind"] == "cancel_requested"]
    assert requested["reason"] == "manual" and requested["detail"]["note"] == "stuck in a loop"
    no_policy_violations(browser)


def test_the_read_only_page_has_no_cancel_control_and_runs_no_script_from_data(
    tether: Tether, fake, browser: WebDriver
):
    rid = create(fake, fake_run="600", note="<script>alert(1)</script>")
    tether.ok("track", rid, "--label", "team=<img src=x onerror=alert(2)>")
    base = serve_dashboard(tether, token=True)  # a token exists, but this page was not opened with it
    browser.get(f"{base}/responses/{rid}")
    assert text_of(browser, "mode") == "read-only"
    assert browser.find_elements(By.ID, "cancel") == []
    assert browser.find_elements(By.CSS_SELECTOR, "form[method=post], button.danger") == []
    record = browser.find_element(By.CSS_SELECTOR, ".record").text
    assert "note=<script>alert(1)</script>" in record and "team=<img src=x onerror=alert(2)>" in record
    assert browser.find_elements(By.CSS_SELECTOR, "main script, main img") == []
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    no_policy_violations(browser)
