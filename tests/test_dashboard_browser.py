"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright, on a real
daemon against the stand-in. With TETHER_SCREENSHOTS=<folder> the tests save a screenshot of
each page there (docs/images/ holds the ones the README shows)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Dialog, Page, expect, sync_playwright

from conftest import Tether, create, server_record, wait_for
from dashboard_support import TOKEN, serve_dashboard
from tether.render import usd

# Debian's build, not one that Playwright downloads: `playwright install` is never run.
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = os.environ.get("TETHER_SCREENSHOTS")
TIMEOUT_MS = 40_000  # each wait on the page (an element to appear, a text to change), on a busy 2-core machine

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


@dataclass
class Browser:
    """A page of headless Chromium, with every message its console logged (the Content-Security-Policy's
    reports included) and every dialog (alert, confirm, prompt) it opened, each dismissed."""

    page: Page
    console: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def dismiss(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} missing: install Debian's chromium (.ci/run does)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--disable-dev-shm-usage"], timeout=60_000
        )
        try:
            page = chromium.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.set_default_navigation_timeout(60_000)
            opened = Browser(page)
            page.on("console", lambda message: opened.console.append(message.text))
            page.on("dialog", opened.dismiss)
            yield opened
        finally:
            chromium.close()


def shoot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=Path(SCREENSHOTS) / f"dashboard-{name}.png")


def text_of(page: Page, element_id: str) -> str:
    return page.locator(f"#{element_id}").inner_text().strip()


def texts(page: Page, selector: str) -> list[str]:
    return [text.strip() for text in page.locator(selector).all_inner_texts()]


def no_policy_violations(browser: Browser) -> None:
    """Nothing the Content-Security-Policy blocked (an inline script or style would be)."""
    assert not [m for m in browser.console if "Content Security Policy" in m], browser.console


def until(condition: Callable[[], Any], timeout: float = 40, what: str = "") -> Any:
    return wait_for(condition, timeout=timeout, interval=0.2, what=what)


def test_the_overview_shows_the_counts_and_a_countdown_ticks(tether: Tether, fake, browser: Browser):
    page = browser.page
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
    page.goto(base + "/")
    assert text_of(page, "active-total") == "5"
    assert text_of(page, "active-in_progress") == "3" and text_of(page, "active-queued") == "2"
    manual = texts(page, '#cancels td[data-reason="manual"]')
    assert manual == ["1", "1"]  # the last hour, the last day
    [team] = tether.json("budget")
    budget_text = text_of(page, "budget-team")
    assert f"{usd(team['spent_usd'])} spent + {usd(team['committed_usd'])} committed of $5.00" in budget_text
    assert team["committed_usd"] == pytest.approx(3 * 0.5 + 2 * 0.25)
    shoot(page, "overview")
    no_policy_violations(browser)

    page.goto(base + "/responses?status=in_progress")
    rows = page.locator("#responses tbody tr").all()
    assert sorted(r.get_attribute("data-id") or "" for r in rows) == sorted(running)
    countdown = page.locator("#responses .countdown").first
    first = countdown.inner_text().strip()
    assert first.startswith("in 1") and first.endswith("s"), first  # about 2h less what has run: "in 119m54s"
    until(lambda: countdown.inner_text().strip() not in ("", first), timeout=10, what="the countdown to tick")
    page.goto(base + "/responses")
    shoot(page, "responses")
    page.goto(base + "/budgets")
    assert usd(team["committed_usd"]) in page.locator('#budget-team [data-figure="committed"]').first.inner_text()
    assert page.locator("#budget-team svg polyline.chart-spend").count()
    shoot(page, "budgets")
    page.goto(base + "/events?kind=cancel_requested")
    assert texts(page, "#events .kind") == ["cancel_requested"]
    no_policy_violations(browser)


def test_a_response_cancelled_by_its_policy_shows_its_events_live(tether: Tether, fake, browser: Browser):
    page = browser.page
    base = serve_dashboard(tether, token=False, policies=POLICIES)
    page.goto(f"{base}/events")  # open before the response is even tracked: all it shows comes live
    page.evaluate("window.notReloaded = true")
    rid = create(fake, fake_run="600", case="runaway")
    tether.ok("track", rid)

    def kinds() -> list[str]:
        return texts(page, f'#events tr:has(a[href="/responses/{rid}"]) .kind')

    until(lambda: "tracked" in kinds(), what="the tracked event on the open page")
    until(lambda: "cancel_requested" in kinds(), what="the policy's cancel on the open page")
    until(lambda: kinds()[0] == "status", what="the cancelled status on the open page")
    assert kinds() == ["status", "cancel_requested", "limit_exceeded", "tracked"]
    assert page.evaluate("window.notReloaded") is True
    assert len(server_record(fake, rid)["cancels"]) == 1
    shoot(page, "events")
    no_policy_violations(browser)

    page.goto(f"{base}/responses/{rid}")
    assert text_of(page, "status") == "cancelled"
    timeline = texts(page, "#events .kind")
    assert timeline == ["status", "cancel_requested", "limit_exceeded", "tracked"]
    shoot(page, "response")


def test_a_cancel_through_the_page_with_the_token_reaches_the_api(tether: Tether, fake, browser: Browser):
    page = browser.page
    rid = create(fake, fake_run="600")
    tether.ok("track", rid)
    base = serve_dashboard(tether, token=True)
    page.goto(f"{base}/responses/{rid}?token={TOKEN}")
    assert TOKEN not in page.url and TOKEN not in page.content()
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads it
    assert text_of(page, "mode") == "operator: cancel enabled"
    page.locator('#cancel input[name="reason"]').press_sequentially("stuck in a loop")
    page.locator("#cancel button").click()
    expect(page.locator("#confirm"), "the confirmation page").to_be_attached(timeout=TIMEOUT_MS)
    assert text_of(page, "reason") == "stuck in a loop"
    assert server_record(fake, rid)["cancels"] == []  # asked, not sent
    shoot(page, "confirm")
    page.locator("#confirm button").click()
    wait_for(lambda: server_record(fake, rid)["cancels"], timeout=20, what="the cancel at the stand-in")
    expect(page, "back on the response").to_have_url(f"{base}/responses/{rid}", timeout=TIMEOUT_MS)
    until(lambda: "stuck in a loop" in text_of(page, "events"), what="the cancel in the timeline")
    [requested] = [e for e in tether.json("show", rid)["events"] if e["kind"] == "cancel_requested"]
    assert requested["reason"] == "manual" and requested["detail"]["note"] == "stuck in a loop"
    no_policy_violations(browser)


def test_the_read_only_page_has_no_cancel_control_and_runs_no_script_from_data(tether: Tether, fake, browser: Browser):
    page = browser.page
    rid = create(fake, fake_run="600", note="<script>alert(1)</script>")
    tether.ok("track", rid, "--label", "team=<img src=x onerror=alert(2)>")
    base = serve_dashboard(tether, token=True)  # a token exists, but this page was not opened with it
    page.goto(f"{base}/responses/{rid}")
    assert text_of(page, "mode") == "read-only"
    assert page.locator("#cancel").count() == 0
    assert page.locator("form[method=post], button.danger").count() == 0
    record = page.locator(".record").first.inner_text()
    assert "note=<script>alert(1)</script>" in record and "team=<img src=x onerror=alert(2)>" in record
    assert page.locator("main script, main img").count() == 0
    assert browser.dialogs == []  # no alert() ran
    no_policy_violations(browser)
