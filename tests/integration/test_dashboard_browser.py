"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against a real Airflow API server
and a registry made by real DAG runs. An admin logs in, opens Models from Airflow's navigation, sees the
champion, opens a version's report, compares two versions, promotes one and rolls back, each time seeing the
history change; a viewer is offered no action and is refused one.

Set ``AIRFLOW_TL_SCREENSHOTS`` to a folder to keep screenshots of the pages (docs/dashboard.md uses them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import quote

import pytest

CHROMIUM = "/usr/bin/chromium"
# Headless and quiet: nothing on this machine may reach out to the network.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
SHOTS = os.environ.get("AIRFLOW_TL_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert shutil.which("chromium") or Path(CHROMIUM).exists(), (
        f"Chromium is missing at {CHROMIUM}: install Debian's package (apt-get install chromium); .ci/run does"
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def log_in(browser, server, user: str):
    passwords = json.loads((server.home / "simple_auth_manager_passwords.json.generated").read_text())
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.goto(f"{server.url}/auth/login")
    page.locator("input[name=username]").fill(user)
    page.locator("input[name=password]").fill(passwords[user])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{server.url}/**")
    page.get_by_role("button", name="Browse").wait_for()
    return page


def shot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"dashboard-{name}.png"))


def test_an_admin_finds_the_champion_reads_a_report_compares_promotes_and_rolls_back(
    browser, dashboard_server, dashboard_registry
):
    page = log_in(browser, dashboard_server, "admin")
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Models").click()
    frame = page.frame_locator("iframe")
    digits = frame.locator("tr", has=frame.get_by_role("link", name="digits", exact=True))
    champion = digits.locator("td.champion").inner_text()
    assert champion in ("v1", "v2") and f"Registry {dashboard_registry}" in frame.locator("h2").first.inner_text()
    other = "v2" if champion == "v1" else "v1"
    shot(page, "models")

    frame.get_by_role("link", name="digits", exact=True).click()
    frame.get_by_role("heading", name="digits").wait_for()
    assert [frame.locator("tbody tr td:first-child a").nth(i).inner_text() for i in range(2)] == ["v2", "v1"]
    shot(page, "model")

    frame.locator("select[name=a]").select_option("v1")
    frame.locator("select[name=b]").select_option("v2")
    frame.get_by_role("button", name="Compare").click()
    frame.get_by_role("heading", name="digits: v1 and v2").wait_for()
    assert frame.get_by_text("Confusion matrices").count() == 1
    shot(page, "compare")

    # The version's report, served from S3 with its plots.
    report_page = page.context.new_page()
    report_page.goto(
        f"{dashboard_server.url}/airflow-tl/models/digits/versions/{champion}/report?registry={quote(dashboard_registry)}"
    )
    plots = report_page.locator("img[src^='data:image/png']")
    assert plots.count() >= 1 and plots.first.evaluate("img => img.naturalWidth") > 0
    report_page.close()

    # Make the other version the champion from its page (a promotion, or a rollback if it was champion before,
    # as when the API tests ran first); the history shows who and why.
    frame.get_by_role("link", name="digits").first.click()
    frame.get_by_role("link", name=other, exact=True).first.click()
    heading = frame.get_by_role("heading", name=re.compile(rf"^(Promote|Roll back to) {other}$"))
    action = "Promote" if heading.inner_text().startswith("Promote") else "Roll back"
    shot(page, "version")
    frame.locator("input[name=reason]").fill("checked on the night photos")
    frame.get_by_role("button", name=action).click()
    frame.get_by_role("heading", name="digits · champion history").wait_for()
    latest = frame.locator("tbody tr").nth(1)  # row 0 is the header
    done = "promoted by hand" if action == "Promote" else "rolled back by hand"
    assert other in latest.inner_text() and done in latest.inner_text() and "admin" in latest.inner_text()
    assert "checked on the night photos" in latest.inner_text()
    shot(page, "history")

    # And back: the former champion is offered as a rollback.
    frame.get_by_role("link", name="digits").first.click()
    frame.get_by_role("link", name=champion, exact=True).first.click()
    frame.locator("input[name=reason]").fill("back to the proven one")
    frame.get_by_role("button", name="Roll back").click()
    frame.get_by_role("heading", name="digits · champion history").wait_for()
    assert "rolled back by hand" in frame.locator("tbody tr").nth(1).inner_text()
    page.context.close()


def test_a_viewer_is_offered_no_action_and_is_refused_one(browser, dashboard_server, dashboard_registry):
    page = log_in(browser, dashboard_server, "viewer")
    registry = quote(dashboard_registry)
    page.goto(f"{dashboard_server.url}/airflow-tl/models/digits/versions/v2?registry={registry}")
    assert page.get_by_role("heading", name="digits · v2").count() == 1
    assert page.locator("form[method=post]").count() == 0
    # The form's request, sent anyway with the viewer's session: refused, and the page says why.
    answer = page.request.post(
        f"{dashboard_server.url}/airflow-tl/models/digits/promote?registry={registry}",
        form={"version": "v2", "reason": "mine", "expected_champion": "v1"},
        headers={"Origin": dashboard_server.url},
    )
    assert answer.status == 403 and "needs DAG edit access" in answer.text()
    page.context.close()
