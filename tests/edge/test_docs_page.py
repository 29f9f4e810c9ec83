"""/docs: Swagger UI from vendored assets, under a strict CSP, rendering with no network.

The browser test drives Debian's real headless Chromium against the real app on a loopback
port, with every request to any other host aborted: the page must still render the API.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.serving import make_server

from tests.conftest import make_app
from tests.dashboard.test_browser import CHROMIUM_ARGS
from tests.dashboard.test_browser import chromium as chromium  # noqa: F401 - the fixture
from tests.helpers import Api

LOCAL = re.compile(r"^http://127\.0\.0\.1:\d+/")


def test_docs_page_loads_only_local_assets_under_a_strict_csp(make: Any, sqlite_url: str) -> None:
    api = Api(make(sqlite_url))
    page = api.get("/docs")
    assert page.status_code == 200
    csp = page.headers["Content-Security-Policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'",
                      "connect-src 'self'", "object-src 'none'", "frame-ancestors 'none'",
                      "base-uri 'none'"):
        assert directive in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    html = page.get_data(as_text=True)
    assert "cdn" not in html.lower() and "https://" not in html and "//" not in html.replace(
        "<!doctype html>", "")
    # No inline script: every <script> has a src on this origin.
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all(body.strip() == "" and 'src="/docs/assets/' in attrs
                           for attrs, body in scripts)
    bundle = api.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.data) > 500_000
    assert bundle.headers["Content-Type"].startswith("text/javascript")
    bundle.close()
    # Only the listed files: no path tricks into the wheel or the app.
    for name in ("VERSION", "..%2F__init__.py", "index.template.html", "LICENSE"):
        assert api.get(f"/docs/assets/{name}").status_code == 404
    # APIFlask's CDN page is gone, and the spec is still served.
    assert api.get("/openapi.json").status_code == 200


def test_docs_can_be_switched_off(make: Any, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIVACY_API_DOCS", "off")
    api = Api(make(sqlite_url))
    resp = api.get("/docs")
    assert resp.status_code == 404 and resp.get_json()["code"] == "not_found"
    assert api.get("/docs/assets/swagger-ui-bundle.js").status_code == 404
    assert api.get("/openapi.json").status_code == 200
    monkeypatch.setenv("PRIVACY_API_DOCS", "maybe")
    from privacy_api.runtime.config import ConfigError

    with pytest.raises(ConfigError, match="PRIVACY_API_DOCS"):
        make(sqlite_url)


@pytest.fixture
def live_docs(sqlite_url: str) -> Iterator[str]:
    app = make_app(sqlite_url)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        app.extensions["privacy_api"].cache.close()
        app.extensions["privacy_api"].db.dispose()


@pytest.mark.browser
@pytest.mark.xdist_group("browser")
def test_docs_render_offline_in_chromium(live_docs: str, chromium: str) -> None:  # noqa: F811
    from playwright.sync_api import sync_playwright

    blocked: list[str] = []
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context()

        def _route(route: Any) -> None:
            if LOCAL.match(route.request.url):
                route.continue_()
            else:  # offline: nothing but this host answers
                blocked.append(route.request.url)
                route.abort()

        context.route("**/*", _route)
        page = context.new_page()
        page.set_default_timeout(20_000)
        # CSP violations are reported as console errors.
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        response = page.goto(f"{live_docs}/docs")
        assert response is not None and response.status == 200
        assert "script-src 'self'" in response.headers["content-security-policy"]
        page.wait_for_selector(".swagger-ui .info .title")
        assert "privacy-api" in page.locator(".swagger-ui .info .title").inner_text()
        # The operations from /openapi.json are listed.
        page.wait_for_selector(".opblock-summary-path")
        paths = page.locator(".opblock-summary-path").all_inner_texts()
        assert any("/v1/datasets" in p for p in paths)
        page.locator(".opblock-summary-path", has_text="/v1/me").first.click()
        page.wait_for_selector(".opblock-body")
        context.close()
        browser.close()
    assert blocked == []
    assert errors == []
