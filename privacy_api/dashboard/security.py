"""Dashboard sign-in, the per-request admin check, cookies and response headers.

The session cookie holds only the id of the API key used to sign in (never the key). Every
request re-reads that key and its user, so revoking the key, disabling the user or changing
their role ends the session on the next click.
"""

from __future__ import annotations

import datetime as dt
import time

from flask import Flask, Response, has_request_context, request
from flask import session as cookie_session
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..auth import user_for_key
from ..errors import Forbidden, Unauthorized
from ..models import ApiKey, User
from ..services.audit import record_action

SESSION_KEY_ID = "admin_key_id"
SESSION_STARTED = "admin_signed_in_at"
# Absolute lifetime: a stolen cookie is useful for a working day at most.
MAX_SESSION_AGE = dt.timedelta(hours=8)

# `style-src`/`script-src` fall back to default-src 'self': no inline script or style can run,
# so injected markup is inert. form-action and base-uri are not covered by default-src.
CSP = "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"


class SchemeAwareSessionInterface(SecureCookieSessionInterface):
    """Mark the session cookie Secure whenever the request arrived over HTTPS.

    `request.is_secure` follows the WSGI url_scheme; behind a TLS proxy Werkzeug's ProxyFix sets
    it from X-Forwarded-Proto when PRIVACY_API_TRUSTED_PROXIES is set (create_app).
    SESSION_COOKIE_SECURE=True forces it on everywhere.
    """

    def get_cookie_secure(self, app: Flask) -> bool:
        forced = bool(app.config["SESSION_COOKIE_SECURE"])
        return forced or (has_request_context() and request.is_secure)


def apply_security_headers(response: Response, *, cacheable: bool) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    if not cacheable:
        # Pages carry budgets, names and sometimes a new key: never keep them in any cache.
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
    return response


def sign_in(session: Session, plaintext: str) -> User:
    """Check an API key for dashboard use and start a cookie session holding its id."""
    plaintext = plaintext.strip()
    user = user_for_key(plaintext) if plaintext else None
    if user is None:
        raise Unauthorized("That API key is not valid (unknown, mistyped or revoked).")
    if user.role != "admin":
        raise Forbidden(f"This key belongs to a user with the {user.role} role. "
                        "Only admin keys can sign in to the dashboard.")
    # user_for_key has verified the digest; the id is the key's second field (pa_<id>_<secret>).
    key_id = plaintext.split("_")[1]
    admin = session.get(User, user.id)
    assert admin is not None
    cookie_session.clear()
    cookie_session[SESSION_KEY_ID] = key_id
    cookie_session[SESSION_STARTED] = int(time.time())
    record_action(session, admin, "dashboard.sign_in", f"user:{admin.id}", key_id=key_id)
    return admin


def sign_out() -> None:
    cookie_session.clear()


def signed_in_admin(session: Session) -> tuple[User | None, str | None]:
    """The admin behind this cookie session, or (None, why the session is not valid)."""
    key_id = cookie_session.get(SESSION_KEY_ID)
    if not isinstance(key_id, str):
        return None, None
    started = cookie_session.get(SESSION_STARTED)
    if not isinstance(started, int) or time.time() - started > MAX_SESSION_AGE.total_seconds():
        return None, "Your session expired. Sign in again."
    row = session.execute(
        select(ApiKey, User).join(User, User.id == ApiKey.user_id).where(ApiKey.id == key_id)
    ).first()
    if row is None or row[0].revoked_at is not None:
        return None, "Your session ended because its API key was revoked."
    user = row[1]
    if user.disabled:
        return None, "Your session ended because your account was disabled."
    if user.role != "admin":
        return None, "Your session ended because your account is no longer an admin."
    return user, None


# CSRF is checked only where a cookie authenticates the request: the dashboard's before_request
# calls `csrf.protect()` for POSTs. The JSON API uses bearer keys, which a browser never attaches
# on its own, so it needs (and gets) no CSRF check.
csrf = CSRFProtect()
