"""SESSION_COOKIE_SECURE and HSTS are settable from the environment."""

from __future__ import annotations

from typing import Any

import pytest

from privacy_api.runtime.config import ConfigError
from tests.dashboard.conftest import Dash
from tests.helpers import Api


def _signin_cookie(app: object, name: str) -> str:
    api = Api(app)
    _, admin = api.user(name, "admin")
    resp = Dash(app).sign_in(admin)
    assert resp.status_code == 303
    cookie: str = resp.headers["Set-Cookie"]
    return cookie


def test_session_cookie_secure_can_be_forced_on_plain_http(make: Any, sqlite_url: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert "Secure" not in _signin_cookie(make(sqlite_url), "root")  # default: follows the scheme
    monkeypatch.setenv("PRIVACY_API_SESSION_COOKIE_SECURE", "on")
    cookie = _signin_cookie(make(sqlite_url), "root2")
    assert "Secure" in cookie and "HttpOnly" in cookie


def test_hsts_is_off_by_default_and_sent_everywhere_when_set(make: Any, sqlite_url: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    api = Api(make(sqlite_url))
    assert "Strict-Transport-Security" not in api.get("/v1/me").headers
    monkeypatch.setenv("PRIVACY_API_HSTS_MAX_AGE", "31536000")
    api = Api(make(sqlite_url))
    for path in ("/v1/me", "/admin/signin", "/openapi.json", "/docs", "/nope"):
        resp = api.get(path)
        assert resp.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains", path


@pytest.mark.parametrize("name, value", [
    ("PRIVACY_API_HSTS_MAX_AGE", "-1"), ("PRIVACY_API_HSTS_MAX_AGE", "a year"),
    ("PRIVACY_API_SESSION_COOKIE_SECURE", "sometimes"),
])
def test_bad_values_refuse_to_start(make: Any, sqlite_url: str, monkeypatch: pytest.MonkeyPatch,
                                    name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        make(sqlite_url)
