"""The dashboard in a real headless Chromium against the real app on a real port.

Uses Debian's /usr/bin/chromium (Playwright's own browser download is not available offline).
Screenshots land in test-output/screenshots/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from werkzeug.serving import make_server

from tests.conftest import make_app
from tests.helpers import Api, patient_rows

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]


@pytest.fixture(scope="session")
def chromium() -> str:
    if not os.path.exists(CHROMIUM) and os.geteuid() == 0 and shutil.which("apt-get"):
        # One attempt per session; CI (.ci/run) normally installs it beforehand.
        try:
            subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], timeout=300,
                           check=False, capture_output=True)
        except (OSError, subprocess.TimeoutExpired):
            pass
    if not os.path.exists(CHROMIUM):
        pytest.skip(reason=f"browser tests need Debian's chromium at {CHROMIUM} "
                    "(apt-get install chromium); it is not installed")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip(reason="browser tests need the playwright Python package")
    return CHROMIUM


@pytest.fixture
def live(sqlite_url: str) -> Iterator[dict[str, Any]]:
    """The real app served by werkzeug on a free loopback port, with users and a dataset."""
    app = make_app(sqlite_url)
    api = Api(app)
    _, admin = api.user("root", "admin")
    _, owner = api.user("olga", "owner")
    ana_id, analyst = api.user("ana", "analyst")
    ds = api.dataset(owner, rows=patient_rows(300))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": f"http://127.0.0.1:{server.server_port}", "admin": admin,
               "analyst": analyst, "ana_id": ana_id, "ds": ds}
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        app.extensions["privacy_api"].cache.close()
        app.extensions["privacy_api"].db.dispose()


@pytest.fixture
def page(chromium: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(15_000)
        problems: list[str] = []
        # A CSP violation (inline style/script) or any off-host request would show up here.
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" and
                "Failed to load resource" not in m.text else None)
        page.on("request", lambda r: problems.append(f"off-host request {r.url}")
                if not r.url.startswith("http://127.0.0.1:") else None)
        page.problems = problems
        try:
            yield page
        finally:
            context.close()
            browser.close()


def _query(live: dict[str, Any], epsilon: float, aggregate: str = "count") -> dict[str, Any]:
    resp = httpx.post(f"{live['url']}/v1/datasets/{live['ds']}/query",
                      headers={"Authorization": f"Bearer {live['analyst']}"},
                      json={"aggregate": aggregate, "epsilon": epsilon}, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _eps_fraction(page: Any) -> float:
    return float(page.locator("#budgets tr[data-dataset] td.eps svg.bar").first
                 .get_attribute("data-fraction"))


def test_admin_signs_in_grants_a_budget_and_watches_spend(live: dict[str, Any], page: Any) -> None:
    url = live["url"]
    page.goto(f"{url}/admin")
    assert page.url.endswith("/admin/signin")
    page.screenshot(path=SCREENSHOTS / "01-signin.png")

    # A non-admin key is refused with a clear message.
    page.fill("#api_key", live["analyst"])
    page.click("button[type=submit]")
    assert "Only admin keys can sign in" in page.locator(".flash.error").inner_text()
    page.screenshot(path=SCREENSHOTS / "02-non-admin-refused.png")

    page.fill("#api_key", live["admin"])
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/admin")
    assert "Signed in as root" in page.locator(".whoami").inner_text()

    # Grant a budget from the analyst's page.
    page.click("text=Users")
    page.click("#users >> text=ana")
    page.wait_for_url(f"{url}/admin/analysts/{live['ana_id']}")
    page.select_option("#grant select[name=dataset_id]", str(live["ds"]))
    page.fill("#grant input[name=epsilon]", "2")
    page.select_option("#grant select[name=renewal_period]", "monthly")
    page.fill("#grant input[name=lifetime_epsilon_cap]", "10")
    page.click("#grant button[type=submit]")
    assert "Budget on dataset" in page.locator(".flash.ok").inner_text()
    assert _eps_fraction(page) == 0
    assert page.locator("svg.chart").count() == 0  # nothing spent yet

    # The analyst queries through the API; a reload shows the spend bar and chart move.
    _query(live, 0.5)
    page.reload()
    assert _eps_fraction(page) == pytest.approx(0.25)
    assert page.locator("svg.chart").get_attribute("data-charges") == "1"
    first_line = page.locator("svg.chart polyline").first.get_attribute("points")
    _query(live, 0.25)
    replay = _query(live, 0.25)
    assert replay["replayed"] is True and replay["epsilon_spent"] == 0
    page.reload()
    assert _eps_fraction(page) == pytest.approx(0.375)
    assert page.locator("svg.chart").get_attribute("data-charges") == "2"
    assert page.locator("svg.chart polyline").first.get_attribute("points") != first_line
    assert page.locator("table.log tbody tr").count() == 3
    assert "replay" in page.locator("table.log tbody tr").first.inner_text()
    page.screenshot(path=SCREENSHOTS / "03-analyst.png", full_page=True)

    page.click("nav >> text=Overview")
    assert float(page.locator("#budgets td.eps svg.bar").first
                 .get_attribute("data-fraction")) == pytest.approx(0.375)
    # period and lifetime side by side: 0.75 of this month's 2, and 0.75 of the lifetime cap 10
    assert "monthly, renews" in page.locator("#budgets td.eps").first.inner_text()
    assert float(page.locator("#budgets td.lifetime svg.bar").first
                 .get_attribute("data-fraction")) == pytest.approx(0.075)
    page.screenshot(path=SCREENSHOTS / "04-overview.png", full_page=True)

    page.click("nav >> text=Audit log")
    assert "budget.grant" in page.locator("#audit").inner_text()
    page.screenshot(path=SCREENSHOTS / "05-audit.png", full_page=True)
    assert page.problems == []


def test_a_form_without_its_csrf_token_is_refused(live: dict[str, Any], page: Any) -> None:
    url = live["url"]
    page.goto(f"{url}/admin/signin")
    page.fill("#api_key", live["admin"])
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/admin")
    page.goto(f"{url}/admin/users")
    # Strip the token as a forged cross-site form would lack it, then submit.
    page.evaluate("document.querySelector('form[action$=\"/admin/users\"] "
                  "input[name=csrf_token]').remove()")
    page.fill("input[name=name]", "mallory")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.click("form[action$='/admin/users'] button[type=submit]")
    assert posted.value.status == 400
    assert "Form refused" in page.locator("h1").inner_text()
    page.screenshot(path=SCREENSHOTS / "06-csrf-refused.png")
    page.goto(f"{url}/admin/users")
    assert "mallory" not in page.locator("#users").inner_text()
    # With its token the same form works, and the new key is shown once.
    page.fill("input[name=name]", "carol")
    page.click("form[action$='/admin/users'] button[type=submit]")
    key = page.locator("#new-key").inner_text()
    assert key.startswith("pa_")
    page.screenshot(path=SCREENSHOTS / "07-key-created.png")
    page.click("text=Continue to carol")
    assert key not in page.content()
    assert page.problems == []
